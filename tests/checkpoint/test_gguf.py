"""GGUF import against transformers' own GGUF loader, on files written here by the gguf writer.

Each file has random LLaMA weights (GQA or MHA, tied or untied, Q8_0 / Q4_1 / Q4_0 / BF16 / Q4_K)
and a tokenizer in its metadata (byte-level BPE with ChatML, or SentencePiece). Checked: logits
within 1e-4 of `AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)` in float32, greedy
generation equal to transformers' `generate`, tokenization (special tokens included) equal to
transformers' tokenizer from the same file, and one-line errors for files we cannot load.
"""

from __future__ import annotations


import numpy as np
import pytest

from gguf_fixtures import write_tiny_gguf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CASES = {
    "q8_0-gqa-tied-bpe": dict(qtype="Q8_0", heads=4, kv_heads=2, tied=True, tokenizer="gpt2"),
    "q4_1-gqa-untied-sp": dict(qtype="Q4_1", heads=4, kv_heads=1, tied=False, tokenizer="llama"),
    "q4_0-mha-untied-bpe": dict(qtype="Q4_0", heads=4, kv_heads=4, tied=False, tokenizer="gpt2",
                                embed_qtype="BF16"),
    "q4_k-gqa-tied-bpe": dict(qtype="Q4_K", heads=4, kv_heads=2, tied=True, tokenizer="gpt2", hidden=256,
                              intermediate=256, layers=1),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def gguf_case(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    f = d / "model.gguf"
    write_tiny_gguf(f, **CASES[request.param])
    hf = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f.name, dtype=torch.float32).eval()
    return request.param, f, hf


def _ids(vocab: int, rows: int = 2, length: int = 11, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab, (rows, length)).astype(np.int32)


def test_logits_match_transformers_gguf_loader(gguf_case):
    from bioinstruct_jax.checkpoint.hf import load_pretrained

    name, f, hf = gguf_case
    model, config = load_pretrained(f, dtype="float32")
    assert config.tie_word_embeddings == CASES[name]["tied"]
    assert config.num_key_value_heads == CASES[name]["kv_heads"]
    ids = _ids(config.vocab_size)
    ours = np.asarray(model(ids))
    with torch.no_grad():
        ref = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    assert np.abs(ref).max() > 0.1  # not a degenerate all-zero model
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers_generate(gguf_case):
    from bioinstruct_jax.checkpoint.hf import load_pretrained
    from bioinstruct_jax.infer.engine import Generator

    _, f, hf = gguf_case
    model, config = load_pretrained(f, dtype="float32")
    model.eval()
    prompt = _ids(config.vocab_size, rows=1, length=7, seed=3)[0].tolist()
    gen = Generator(model, max_length=128, eos_ids=[])  # no early stop: 16 tokens compared
    ours = gen.generate([prompt], max_new_tokens=16).tokens[0]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert ours == ref


def test_tokenizer_matches_transformers_on_the_same_file(gguf_case):
    from bioinstruct_jax.checkpoint.tokenizer import GGUFTokenizer, load_tokenizer

    name, f, _ = gguf_case
    tok = load_tokenizer(f)
    assert isinstance(tok, GGUFTokenizer)
    ref = transformers.AutoTokenizer.from_pretrained(f.parent, gguf_file=f.name)
    texts = ["What is metformin used for?", "  two  spaces\nand a newline", "dose: 500 mg, twice daily."]
    if CASES[name]["tokenizer"] == "gpt2":
        texts += ["<|im_start|>user\nWhat is metformin?<|im_end|>\n<|im_start|>assistant\n"]
        assert not tok.adds_bos and tok.bos_id == 1 and tok.eos_id == 2 and tok.pad_id == 2
        assert tok.chat_template and "<|im_start|>" in tok.chat_template
    else:
        texts += ["<s>a sentence</s> and more"]
        assert tok.adds_bos and not tok.adds_eos and tok.chat_template is None
    for text in texts:
        ours = tok.encode(text, add_bos=tok.adds_bos, add_eos=tok.adds_eos)
        assert ours == ref(text).input_ids, text
        assert tok.decode(ours, skip_special=False).replace("<s>", "").strip() != ""


def test_torch_free_tokenizer_conversion_equals_transformers(gguf_case):
    """The path taken where torch is not installed gives transformers' tokenizer exactly."""
    from bioinstruct_jax.checkpoint.tokenizer import gguf_tokenizer_backend

    _, f, _ = gguf_case
    ours = gguf_tokenizer_backend(f)
    ref = transformers.AutoTokenizer.from_pretrained(f.parent, gguf_file=f.name)
    text = "<|im_start|>user\nWhat  is <s>metformin</s>?<|im_end|>\n dose: 500 mg"
    assert ours(text).input_ids == ref(text).input_ids
    assert (ours.bos_token, ours.eos_token, ours.pad_token, ours.unk_token, ours.chat_template) == (
        ref.bos_token, ref.eos_token, ref.pad_token, ref.unk_token, ref.chat_template)
    assert ours.decode(ours(text).input_ids) == ref.decode(ref(text).input_ids)


def test_tied_file_has_no_output_tensor_and_untied_does(tmp_path):
    from bioinstruct_jax.checkpoint.gguf import GGUFTensorSource

    write_tiny_gguf(tmp_path / "t.gguf", tied=True)
    write_tiny_gguf(tmp_path / "u" / "u.gguf", tied=False)
    assert "lm_head.weight" not in GGUFTensorSource(tmp_path / "t.gguf").weight_map
    assert "lm_head.weight" in GGUFTensorSource(tmp_path / "u").weight_map  # a folder holding one file


def test_unpermute_inverts_llama_cpp_permutation():
    from bioinstruct_jax.checkpoint.gguf import unpermute_rows
    from gguf_fixtures import _permute

    w = np.arange(8 * 2 * 3, dtype=np.float32).reshape(16, 3)
    np.testing.assert_array_equal(unpermute_rows(_permute(w, 2), 2), w)
    assert not np.array_equal(_permute(w, 2), w)


def test_non_llama_architecture_is_a_clear_error(tmp_path):
    from bioinstruct_jax.checkpoint.hf import CheckpointError, load_pretrained

    f = tmp_path / "phi.gguf"
    write_tiny_gguf(f, architecture="phi2")
    with pytest.raises(CheckpointError, match=r"phi\.gguf: GGUF architecture 'phi2' is not supported"):
        load_pretrained(f, dtype="float32")


def test_unsupported_quantization_type_names_tensor_and_file(tmp_path):
    import gguf

    from bioinstruct_jax.checkpoint.hf import CheckpointError, load_pretrained

    f = tmp_path / "q81.gguf"
    write_tiny_gguf(f)
    # Rewrite the embedding's type field in place as Q8_1, which gguf cannot dequantize.
    reader = gguf.GGUFReader(f, "r+")
    t = next(t for t in reader.tensors if t.name == "token_embd.weight")
    t.field.parts[4][0] = gguf.GGMLQuantizationType.Q8_1
    reader.data.flush()
    del reader
    with pytest.raises(CheckpointError, match=r"q81\.gguf: tensor 'token_embd.weight' has quantization type Q8_1"):
        load_pretrained(f, dtype="float32")


def test_folder_with_two_gguf_files_is_ambiguous(tmp_path):
    from bioinstruct_jax.checkpoint.hf import load_pretrained

    write_tiny_gguf(tmp_path / "a.gguf")
    write_tiny_gguf(tmp_path / "b.gguf")
    with pytest.raises(FileNotFoundError, match="a.gguf, b.gguf"):
        load_pretrained(tmp_path)
