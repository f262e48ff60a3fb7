"""The Qwen2 / Qwen2.5 family: LLaMA with biases on the q/k/v projections (none on o_proj or the
MLP), usually tied embeddings, and an optional sliding window that HF leaves off by default.

A config with `use_sliding_window: true` is refused: HF applies that window only to the layers
from `max_window_layers` on, which the one decoder does not model. llama.cpp writes the family as
`general.architecture = qwen2` (NEOX rotary layout: q/k rows stored as HF stores them).
"""

from __future__ import annotations

from typing import Any, Mapping

from bioinstruct_jax.model.family import Family, common_from_hf

PRESETS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(
        model_type="qwen2", attention_bias=True, vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, bos_token_id=151643,
        eos_token_id=(151643,),
    ),
    "tiny-qwen2": dict(
        model_type="qwen2", attention_bias=True, vocab_size=512, hidden_size=64, intermediate_size=176,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        rms_norm_eps=1e-6, tie_word_embeddings=True,
    ),
}


def from_hf(hf: Mapping[str, Any], origin: str) -> dict[str, Any]:
    sliding = [t for t in hf.get("layer_types") or () if t != "full_attention"]
    if hf.get("use_sliding_window") or sliding:
        raise ValueError(f"{origin}: use_sliding_window=true (a window on the layers from max_window_layers on) "
                         "is not supported for qwen2; only full attention")
    fields = common_from_hf(hf, origin, rms_norm_eps=1e-6, max_position_embeddings=32768)
    return {**fields, "model_type": "qwen2", "attention_bias": True}


def to_hf(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {"use_sliding_window": False, "sliding_window": None,
            "max_window_layers": fields["num_hidden_layers"]}


FAMILY = Family(model_type="qwen2", architecture="Qwen2ForCausalLM", gguf_architecture="qwen2",
                gguf_rope_permuted=False, from_hf=from_hf, to_hf=to_hf, presets=PRESETS)

__all__ = ("FAMILY", "PRESETS")
