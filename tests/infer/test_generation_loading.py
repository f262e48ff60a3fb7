"""Loading for inference: `load_model` / `load_predictor` on an HF directory, a PEFT
adapter and a LoRA training run (Orbax), and the `python -m bioinstruct_jax.generate` CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="the fixtures are written by transformers (pip install -e '.[test]')")

import jax.numpy as jnp  # noqa: E402

from bioinstruct_jax.checkpoint.hf import load_pretrained  # noqa: E402
from bioinstruct_jax.infer.cli import main  # noqa: E402
from bioinstruct_jax.infer.engine import Generator  # noqa: E402
from bioinstruct_jax.infer.predictor import JaxPredictor, load_model, load_predictor  # noqa: E402
from hf_fixtures import write_tiny_llama  # noqa: E402
from test_generation import INIT  # noqa: E402


@pytest.fixture(scope="module")
def hf_with_tokenizer(tmp_path_factory):
    from bioinstruct_jax.data.tokenizer import train_sentencepiece, load_tokenizer_files
    from conftest import REPO_ROOT

    d = tmp_path_factory.mktemp("hf_tok")
    texts = [json.loads(line)["instruction"] for line in
             (REPO_ROOT / "seeds" / "bioinstruct_seeds.jsonl").read_text().splitlines() if line.strip()]
    tok_file = train_sentencepiece(texts * 3, 400, d / "sp")
    tok = load_tokenizer_files(tok_file)
    tok.save(d)
    write_tiny_llama(d, "gqa_tied", vocab_size=tok.vocab_size, **INIT)
    return d


def test_load_predictor_and_cli_on_hf_directory(hf_with_tokenizer, capsys):
    pred = load_predictor(str(hf_with_tokenizer), batch_size=4)
    assert isinstance(pred, JaxPredictor)
    from bioinstruct_jax.eval.predictor import Predictor

    assert isinstance(pred, Predictor)
    prompt, continuations = "Is aspirin an NSAID? Answer:", [" yes", " no"]
    scores = pred.score([prompt] * 2, continuations)
    # each score is the continuation's log-probability under transformers' model of the same directory
    import torch
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_with_tokenizer, dtype=torch.float32).eval()
    for cont, score in zip(continuations, scores):
        p_ids, c_ids = pred.continuation_ids(prompt, cont)
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([p_ids + c_ids])).logits[0].float(), -1).numpy()
        want = sum(logp[len(p_ids) + j - 1, t] for j, t in enumerate(c_ids))
        assert score == pytest.approx(want, abs=1e-4)
    assert scores[0] != scores[1]
    # the CLI prints what the predictor generates for the same prompts
    prompts = ["Summarize the patient note.", "List the drugs."]
    main(["--model", str(hf_with_tokenizer), "--prompt", prompts[0], "--prompt", prompts[1],
          "--max-new-tokens", "6", "--jsonl"])
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["prompt"] for x in lines] == prompts
    expected = pred.generate(prompts, max_new_tokens=6)
    assert all(text.strip() for text in expected)  # a comparison of empty strings would prove nothing
    assert [x["generation"] for x in lines] == expected
    with pytest.raises(FileNotFoundError, match="neither an HF checkpoint"):
        load_predictor(str(hf_with_tokenizer / "sp"))


def test_training_run_directory_loads_with_its_lora(hf_with_tokenizer, tmp_path):
    """A LoRA training run (Orbax, random `tiny` base) is a --model of its own; merged and unmerged
    adapters generate the same; --lora on a different base is refused."""
    from bioinstruct_jax.train import loop as train
    from bioinstruct_jax.config import load_run_config
    from bioinstruct_jax.model.lora import lora_modules
    from conftest import REPO_ROOT

    run_dir = tmp_path / "run"
    cfg = load_run_config(None, [
        "model.preset=tiny", "model.param_dtype=float32", "model.dtype=float32",
        f"model.tokenizer={hf_with_tokenizer / 'tokenizer.model'}", "lora.dropout=0.0",
        f"data.train_file={REPO_ROOT / 'seeds' / 'bioinstruct_seeds.jsonl'}", "data.batch_size=4",
        "data.max_length=256", "optim.lr=0.05", "optim.warmup_steps=0", f"train.output_dir={run_dir}",
        "train.steps=2", "train.save_every=2", "train.eval_every=0", "train.log_every=1",
        "train.tensorboard=false", "train.plot=false", "train.progress_bar=false",
        "mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"])
    train.run(cfg)
    model, tok_path = load_model(run_dir)
    assert tok_path and any(float(jnp.abs(m.lora_b[...]).max()) > 0 for _, m in lora_modules(model))
    prompts = ["Summarize the patient note.", "List the drugs."]
    merged = load_predictor(str(run_dir), batch_size=2).generate(prompts, max_new_tokens=6)
    unmerged = load_predictor(str(run_dir), batch_size=2, merge_lora=False).generate(prompts, max_new_tokens=6)
    assert merged == unmerged
    with pytest.raises(ValueError, match="trained on base"):
        load_predictor(str(hf_with_tokenizer), lora=str(run_dir))


def test_peft_adapter_directory_as_lora(hf_with_tokenizer, tmp_path):
    """--lora PEFT_DIR (written by our exporter) generates what the in-memory LoRA model generates."""
    from flax import nnx

    from bioinstruct_jax.checkpoint.peft import write_peft_adapter
    from bioinstruct_jax.model.lora import LoraConfig, apply_lora, lora_modules
    from bioinstruct_jax.data.tokenizer import load_tokenizer_files

    model, _ = load_pretrained(hf_with_tokenizer, dtype=jnp.float32)
    lcfg = LoraConfig(r=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj"))
    apply_lora(model, lcfg, nnx.Rngs(1))
    rng = np.random.default_rng(2)
    for _, m in lora_modules(model):
        m.lora_b.set_value(jnp.asarray(rng.normal(size=m.lora_b.shape).astype(np.float32)))
    model.eval()
    adapter = write_peft_adapter(model, lcfg, tmp_path / "adapter", base_model_name_or_path=str(hf_with_tokenizer))
    prompts = ["Summarize the patient note.", "List the drugs."]
    tok = load_tokenizer_files(hf_with_tokenizer)
    want = JaxPredictor(Generator(model, eos_ids=[tok.eos_id], pad_id=tok.pad_id), tok).generate(prompts, max_new_tokens=6)
    got = load_predictor(str(hf_with_tokenizer), lora=str(adapter), batch_size=2).generate(prompts, max_new_tokens=6)
    base = load_predictor(str(hf_with_tokenizer), batch_size=2).generate(prompts, max_new_tokens=6)
    assert got == want and got != base
