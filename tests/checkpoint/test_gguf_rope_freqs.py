"""LLaMA-3.1 / 3.2 style GGUF files: rotary frequencies from `rope_freqs.weight`, as llama.cpp takes them.

A random LLaMA-3 config with `llama3` rope scaling is built by transformers; its weights go into a
GGUF file written by the `gguf` package's writer as llama.cpp's converter writes such a model: q / k
rows permuted, no rope-scaling metadata, and a `rope_freqs.weight` tensor of per-pair factors
computed by the converter's own formula. Our loader must give transformers' logits for the same
config and weights at positions past the original context (where the scaling matters). With the
original context 8192 (LLaMA 3.1 / 3.2's), the HF `llama3` rule is recovered too, so an HF export
states it; the GGUF export writes the factors back.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from bioinstruct_jax.checkpoint.hf import load_pretrained
from bioinstruct_jax.checkpoint.output import ExportError
from bioinstruct_jax.export.gguf_export import export_gguf
from bioinstruct_jax.export.merged import export_merged
from gguf_fixtures import _permute

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

VOCAB, HIDDEN, HEADS, KV_HEADS, LAYERS = 320, 64, 4, 1, 2
IDS = np.random.default_rng(0).integers(0, VOCAB, (2, 48))


def converter_rope_factors(rope_theta: float, head_dim: int, scaling: dict) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LLaMA-3 `rope_freqs` computation."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    freqs = 1.0 / (rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_len / high:
            out.append(1)
        elif wavelen > old_len / low:
            out.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def write_llama31_gguf(path, original_context: int):
    """(transformers model, its config) with the same weights written as a LLaMA-3.1-style GGUF at path."""
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": original_context}
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128,
                                      num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                      num_key_value_heads=KV_HEADS, max_position_embeddings=131072,
                                      rope_theta=500000.0, rope_scaling=scaling, rms_norm_eps=1e-5,
                                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                                      initializer_range=0.2)  # attention far from uniform: rope matters
    torch.manual_seed(3)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_vocab_size(VOCAB)
    w.add_context_length(131072)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(128)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(LAYERS):
        for hf, ours in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if ours == "attn_q":
                t = _permute(t, HEADS)
            elif ours == "attn_k":
                t = _permute(t, KV_HEADS)
            w.add_tensor(f"blk.{i}.{ours}.weight", np.ascontiguousarray(t))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    w.add_tensor("rope_freqs.weight", converter_rope_factors(500000.0, HIDDEN // HEADS, scaling))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model, config


def hf_logits(model, ids=IDS) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


@pytest.mark.parametrize("original_context", [16, 8192])
def test_llama31_gguf_loads_with_transformers_logits(tmp_path, original_context):
    f = tmp_path / "llama31.gguf"
    ref, hf_config = write_llama31_gguf(f, original_context)
    model, config = load_pretrained(f, dtype="float32")
    assert config.rope_freq_factors is not None and len(config.rope_freq_factors) == HIDDEN // HEADS // 2
    ours = np.asarray(model(jnp.asarray(IDS)))
    want = hf_logits(ref)
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=0)
    # the factors matter here: without them (plain rope) the logits are far off
    plain = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**hf_config.to_dict(), "rope_scaling": None,
                                                                      "rope_parameters": None})).eval()
    plain.load_state_dict(ref.state_dict())
    assert np.abs(hf_logits(plain) - want).max() > 1e-2
    if original_context == 8192:  # LLaMA 3.1's numbers: the HF rule is recovered for config.json
        scaling = config.rope_scaling
        assert (scaling.rope_type, scaling.factor, scaling.original_max_position_embeddings) == ("llama3", 8.0, 8192)
    else:  # factors no HF rule gives: config.json cannot state them, so a merged export is refused
        assert config.rope_scaling is None
        with pytest.raises(ExportError, match="match no HF rope_scaling rule"):
            export_merged(model, tmp_path / "merged")
    # the GGUF export writes the factors back, and the file reads back to the same model
    export_gguf(model, tmp_path / "out", tokenizer=_tiny_tokenizer(tmp_path), dtype="float32")
    back, _ = load_pretrained(tmp_path / "out", dtype="float32")
    np.testing.assert_allclose(np.asarray(back(jnp.asarray(IDS))), ours, atol=1e-6, rtol=0)


def _tiny_tokenizer(tmp_path):
    """A SentencePiece tokenizer of VOCAB pieces (the export needs one; the model ignores it)."""
    from bioinstruct_jax.data.tokenizer import train_sentencepiece
    from gguf_fixtures import TEXTS

    return train_sentencepiece(TEXTS, VOCAB, tmp_path / "sp")
