"""A `qwen2` GGUF file (written with the `gguf` package as llama.cpp's converter writes Qwen2:
q/k rows unpermuted, `attn_q/k/v.bias` tensors, no `output.weight` when tied) loads into the same
model as the HF checkpoint it was made from: equal logits against transformers."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from bioinstruct_jax.checkpoint.hf import load_pretrained
from family_fixtures import write_tiny_family

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

IDS = np.array([[1, 5, 9, 33, 70, 2, 17, 100, 64, 3, 8, 127]])
# HF name suffix -> llama.cpp tensor name of one layer
_LAYER_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                "post_attention_layernorm": "ffn_norm"}


def _gguf_name(hf_name: str) -> str:
    if hf_name.startswith("model.layers."):
        _, _, i, rest = hf_name.split(".", 3)
        module, kind = rest.rsplit(".", 1)
        return f"blk.{i}.{_LAYER_NAMES[module]}.{kind}"
    return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}[hf_name]


def write_qwen2_gguf(path, ref) -> None:
    """The torch Qwen2 model `ref` as a qwen2 GGUF (F32 tensors, so the comparison can be tight)."""
    cfg = ref.config
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, tensor in ref.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # a tied file has no output.weight
        w.add_tensor(_gguf_name(name), np.ascontiguousarray(tensor.float().numpy()))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_qwen2_gguf_loads_with_biases_and_matches_transformers(tmp_path):
    ref = write_tiny_family(tmp_path / "hf", "qwen2", initializer_range=0.1)
    write_qwen2_gguf(tmp_path / "tiny-qwen2.gguf", ref)
    model, config = load_pretrained(tmp_path / "tiny-qwen2.gguf", dtype=jnp.float32)
    assert (config.model_type, config.attention_bias, config.tie_word_embeddings) == ("qwen2", True, True)
    with torch.no_grad():
        theirs = ref(torch.tensor(IDS)).logits.float().numpy()
    ours = np.asarray(model(jnp.asarray(IDS)))
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    assert np.abs(ours).max() > 0.1
