"""Each tokenizer's own BOS/EOS rule, stop ids, the `chat` template (pipeline mask, eval prompts,
`generate --chat`), and export of a GGUF-imported LoRA model with its tokenizer and chat template.

The GGUF files are written here (`gguf_fixtures`); the LLaMA-2 SentencePiece model is the real one
under ../shared/tokenizers (skipped when absent).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from bioinstruct_jax.data import chat
from bioinstruct_jax.data.pipeline import ExampleEncoder
from bioinstruct_jax.checkpoint.tokenizer import load_tokenizer
from bioinstruct_jax.data.tokenizer import train_sentencepiece
from gguf_fixtures import CHATML, TEXTS, write_tiny_gguf

RECORD = {"instruction": "What is metformin used for?", "input": "Patient with type 2 diabetes.",
          "output": "It lowers blood glucose."}


@pytest.fixture(scope="module")
def bpe_gguf(tmp_path_factory) -> pathlib.Path:
    f = tmp_path_factory.mktemp("bpe") / "model.gguf"
    write_tiny_gguf(f, qtype="Q8_0", tokenizer="gpt2")
    return f


@pytest.fixture(scope="module")
def bpe_tok(bpe_gguf):
    return load_tokenizer(bpe_gguf)


def test_chat_example_masks_only_the_reply_and_end_of_turn(bpe_tok):
    ex = ExampleEncoder(bpe_tok, 256, "chat")(RECORD)
    tokens = list(ex.input_ids) + [int(ex.targets[-1])]
    im_end = bpe_tok.tok.convert_tokens_to_ids("<|im_end|>")
    assert chat.end_of_turn_id(bpe_tok) == im_end
    assert tokens[0] == bpe_tok.tok.convert_tokens_to_ids("<|im_start|>")  # no BOS: this tokenizer adds none
    reply = [int(t) for t, m in zip(ex.targets, ex.loss_mask) if m]
    assert reply[-1] == im_end and reply.count(im_end) == 1
    assert bpe_tok.decode(reply[:-1], skip_special=False) == RECORD["output"]
    # the prompt is exactly transformers' apply_chat_template with the generation prompt
    want = bpe_tok.tok.apply_chat_template([chat.user_message(RECORD["instruction"], RECORD["input"])],
                                           tokenize=False, add_generation_prompt=True)
    n_prompt = len(tokens) - len(reply)
    assert bpe_tok.decode(tokens[:n_prompt], skip_special=False) == want
    assert ex.loss_mask[: n_prompt - 1].sum() == 0 and ex.loss_mask[n_prompt - 1:].all()


def test_chat_example_truncates_the_user_message_not_the_template(bpe_tok):
    long = dict(RECORD, input=" ".join(["glucose"] * 200))
    ex = ExampleEncoder(bpe_tok, 64, "chat")(long)
    assert ex is not None and ex.prompt_truncated and len(ex.input_ids) <= 64
    text = bpe_tok.decode(list(ex.input_ids), skip_special=False)
    assert text.endswith("<|im_start|>assistant\n" + RECORD["output"])


def test_alpaca_example_follows_the_tokenizers_bos_rule(bpe_tok, tmp_path):
    no_bos = ExampleEncoder(bpe_tok, 256, "alpaca")(RECORD)
    assert int(no_bos.input_ids[0]) != bpe_tok.bos_id  # SmolLM2-style tokenizer: no BOS
    sp = load_tokenizer(train_sentencepiece(TEXTS, 320, tmp_path))
    assert sp.adds_bos and not sp.adds_eos
    ex = ExampleEncoder(sp, 256, "alpaca")(RECORD)
    assert int(ex.input_ids[0]) == sp.bos_id and int(ex.targets[-1]) == sp.eos_id


def test_llama2_sentencepiece_keeps_bos(shared_dir):
    from conftest import shared_path

    model = shared_path(shared_dir, "tokenizers/llama/tokenizer.model")
    import sentencepiece as spm

    tok = load_tokenizer(model)
    assert tok.adds_bos and not tok.adds_eos and tok.bos_id == 1 and tok.eos_id == 2
    ex = ExampleEncoder(tok, 256, "alpaca")(RECORD)
    assert int(ex.input_ids[0]) == 1 and int(ex.targets[-1]) == 2
    text = "What is metformin used for?"
    assert tok.encode(text, add_bos=tok.adds_bos) == [1] + spm.SentencePieceProcessor(model_file=str(model)).encode(text)


def test_tokenizer_json_rules_come_from_config_or_post_processor(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                       show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    t = load_tokenizer(tmp_path)
    assert t.adds_bos and not t.adds_eos  # the post-processor adds BOS (LLaMA-3 style)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False, "add_eos_token": True}))
    t = load_tokenizer(tmp_path)
    assert not t.adds_bos and t.adds_eos  # tokenizer_config overrides
    t.save(tmp_path / "saved")
    again = load_tokenizer(tmp_path / "saved")
    assert (again.adds_bos, again.adds_eos) == (False, True)


def test_stop_ids_join_generation_config_list_and_end_of_turn(bpe_tok, tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 11}))
    ids = chat.stop_ids(bpe_tok, (5,), tmp_path)
    assert set(ids) == {5, 7, 9, 11, bpe_tok.eos_id, chat.end_of_turn_id(bpe_tok)}


def test_sentencepiece_chat_template_end_of_turn_is_eos(tmp_path):
    sp_path = train_sentencepiece(TEXTS, 320, tmp_path)
    llama2 = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + "
              "' [/INST]' }}{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": llama2}))
    tok = load_tokenizer(tmp_path)
    assert chat.end_of_turn_id(tok) == tok.eos_id
    ex = ExampleEncoder(tok, 256, "chat")(RECORD)
    tokens = list(ex.input_ids) + [int(ex.targets[-1])]
    assert tokens[0] == tok.bos_id and tokens[1] != tok.bos_id  # the template's own BOS, once
    assert int(ex.targets[-1]) == tok.eos_id and ex.loss_mask[-1] == 1
    assert sp_path.is_file()


def test_eval_prompts_use_the_chat_template_with_one_shot(bpe_tok):
    from bioinstruct_jax.eval.loaders import Example
    from bioinstruct_jax.eval.tasks import get_task

    task = get_task("mts_dialog")
    ex = Example(id="1", text="Doctor: hello. Patient: cough.", answer="Cough.")
    shot = Example(id="2", text="Doctor: hi. Patient: fever.", answer="Fever.")
    prompt = task.prompt(ex, shot, template="chat", tokenizer=bpe_tok)
    messages = [chat.user_message(task.instruction_for(shot), task.format_input(shot)),
                {"role": "assistant", "content": "Fever."},
                chat.user_message(task.instruction_for(ex), task.format_input(ex))]
    assert prompt == bpe_tok.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert task.prompt(ex, shot) == task.prompt(ex, shot, template="alpaca")  # default unchanged


def test_generate_chat_cli_equals_manual_greedy(bpe_gguf, capsys):
    from bioinstruct_jax.infer import cli as generate
    from bioinstruct_jax.infer.engine import Generator
    from bioinstruct_jax.checkpoint.hf import load_pretrained

    tok = load_tokenizer(bpe_gguf)
    model, config = load_pretrained(bpe_gguf, dtype="float32")
    model.eval()
    ids = tok.tok.apply_chat_template([{"role": "user", "content": "What is metformin used for?"}],
                                      tokenize=True, add_generation_prompt=True)
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    gen = Generator(model, max_length=256, eos_ids=[tok.eos_id])
    want = tok.decode(gen.generate([ids], max_new_tokens=12).tokens[0])
    assert generate.main(["--model", str(bpe_gguf), "--chat", "What is metformin used for?", "--max-new-tokens",
                          "12", "--jsonl"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert lines == [{"prompt": "What is metformin used for?", "generation": want}]
    # a raw --prompt with escaped newlines is the same conversation typed by hand
    raw = tok.tok.apply_chat_template([{"role": "user", "content": "What is metformin used for?"}], tokenize=False,
                                      add_generation_prompt=True)
    assert generate.main(["--model", str(bpe_gguf), "--prompt", raw.replace("\n", "\\n"), "--max-new-tokens", "12",
                          "--jsonl"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["generation"] == want


def test_gguf_lora_model_exports_merged_with_tokenizer_and_chat_template(bpe_gguf, tmp_path):
    import jax.numpy as jnp
    import torch
    import transformers
    from flax import nnx

    from bioinstruct_jax.export import formats as export
    from bioinstruct_jax.checkpoint.hf import load_pretrained
    from bioinstruct_jax.model.lora import LoraConfig, LoRAParam, apply_lora

    model, _ = load_pretrained(bpe_gguf, dtype="float32")
    lcfg = LoraConfig(r=4, alpha=8.0, dropout=0.0, target_regex=r"layers/\d+/(self_attn|mlp)/\w+_proj")
    apply_lora(model, lcfg, nnx.Rngs(1))
    rng = np.random.default_rng(0)
    for path, var in nnx.iter_graph(model):  # a tuned adapter: nonzero B as well as A
        if isinstance(var, LoRAParam):
            var.set_value(jnp.asarray(rng.normal(0, 0.05, var.shape), jnp.float32))
    model.eval()
    ids = np.array([[5, 9, 33, 70, 2, 17, 100]])
    ours = np.asarray(model(jnp.asarray(ids)))
    out = export.export_model(model, lcfg, tmp_path / "out", fmt="merged", tokenizer=bpe_gguf, dtype="float32")
    merged = out / "merged" if (out / "merged").is_dir() else out
    hf = transformers.AutoModelForCausalLM.from_pretrained(merged).eval()
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(ref, ours, atol=1e-4, rtol=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(merged)
    ours_tok = load_tokenizer(bpe_gguf)
    text = "<|im_start|>user\nWhat is metformin?<|im_end|>\n"
    assert hf_tok(text).input_ids == ours_tok.encode(text, add_bos=ours_tok.adds_bos)
    assert hf_tok.chat_template == CHATML
    assert load_tokenizer(merged).adds_bos is False


def test_run_trained_with_chat_on_a_gguf_base_keeps_its_template(bpe_gguf, tmp_path):
    """Train (2 steps) on a GGUF base with the chat template; generate and eval of the run then
    use that template by default, and --template overrides it."""
    from bioinstruct_jax.train import loop as train
    from bioinstruct_jax.config import load_run_config
    from bioinstruct_jax.eval.__main__ import main as eval_main
    from bioinstruct_jax.infer.predictor import load_predictor

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(dict(RECORD, output=f"Answer {i}.")) + "\n" for i in range(12)))
    run_dir = tmp_path / "run"
    cfg = load_run_config(None, [
        f"model.hf_path={bpe_gguf}", "model.preset=", "model.param_dtype=float32", "model.dtype=float32",
        "lora.dropout=0.0", f"data.train_file={data}", "data.template=chat", "data.batch_size=2",
        "data.max_length=96", "optim.warmup_steps=0", f"train.output_dir={run_dir}", "train.steps=2",
        "train.save_every=2", "train.eval_every=0", "train.log_every=1", "train.tensorboard=false",
        "train.plot=false", "train.progress_bar=false", "mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"])
    train.run(cfg)
    pred = load_predictor(str(run_dir), batch_size=2)
    assert pred.template == "chat" and not pred.add_bos
    assert load_predictor(str(run_dir), batch_size=2, template="alpaca").template == "alpaca"

    seen: list[str] = []

    class Recorder:
        template, tokenizer = pred.template, pred.tokenizer

        def generate(self, prompts, **kw):
            seen.extend(prompts)
            return pred.generate(prompts, **kw)

        def score(self, prompts, continuations):
            return pred.score(prompts, continuations)

    eval_main(["--model", str(run_dir), "--tasks", f"jsonl:{data}", "--output", str(tmp_path / "eval"),
               "--limit", "2", "--max-new-tokens", "4"], predictor=Recorder())
    assert seen and all(p.startswith("<|im_start|>user\n") and p.endswith("<|im_start|>assistant\n") for p in seen)
    seen.clear()
    eval_main(["--model", str(run_dir), "--tasks", f"jsonl:{data}", "--output", str(tmp_path / "eval2"),
               "--limit", "2", "--max-new-tokens", "4", "--template", "alpaca"], predictor=Recorder())
    assert seen and all("### Instruction:" in p and "<|im_start|>" not in p for p in seen)
