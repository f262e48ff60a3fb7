"""The Mistral family: LLaMA with grouped-query attention and a sliding attention window
(`sliding_window`: a token sees itself and the W - 1 tokens before it; null = full attention).

llama.cpp writes Mistral checkpoints as `general.architecture = llama` (no window), so this
family has no GGUF architecture of its own: such a file loads as LLaMA.
"""

from __future__ import annotations

from typing import Any, Mapping

from bioinstruct_jax.model.family import Family, common_from_hf

# MistralConfig's default window, used when a config.json leaves the key out.
HF_DEFAULT_SLIDING_WINDOW = 4096

PRESETS: dict[str, dict[str, Any]] = {
    "mistral-7b-v0.1": dict(
        model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-5,
        sliding_window=4096,
    ),
    "tiny-mistral": dict(
        model_type="mistral", vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6,
        sliding_window=256,
    ),
}


def from_hf(hf: Mapping[str, Any], origin: str) -> dict[str, Any]:
    fields = common_from_hf(hf, origin, rms_norm_eps=1e-6, max_position_embeddings=131072)
    window = hf.get("sliding_window", HF_DEFAULT_SLIDING_WINDOW)
    return {**fields, "model_type": "mistral", "sliding_window": None if window is None else int(window)}


def to_hf(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {"sliding_window": fields["sliding_window"]}


FAMILY = Family(model_type="mistral", architecture="MistralForCausalLM", gguf_architecture=None,
                gguf_rope_permuted=True, from_hf=from_hf, to_hf=to_hf, presets=PRESETS)

__all__ = ("FAMILY", "PRESETS", "HF_DEFAULT_SLIDING_WINDOW")
