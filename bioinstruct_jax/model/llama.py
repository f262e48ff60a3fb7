"""The LLaMA 1/2/3 family, the reference architecture: its HF config keys and named presets.

Every other family is LLaMA plus a few `LlamaConfig` switches; LLaMA itself has none (no
biases, no sliding window). llama.cpp writes it as `general.architecture = llama`, with q/k rows
permuted for its interleaved rotary layout.
"""

from __future__ import annotations

from typing import Any, Mapping

from bioinstruct_jax.model.family import Family, common_from_hf

_LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}
_13B = dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
            num_key_value_heads=40)

PRESETS: dict[str, dict[str, Any]] = {
    "llama1-7b": dict(max_position_embeddings=2048, rms_norm_eps=1e-6),
    "llama1-13b": dict(_13B, max_position_embeddings=2048, rms_norm_eps=1e-6),
    "llama2-7b": {},
    "llama2-13b": dict(_13B),
    "llama3.1-8b": dict(
        vocab_size=128256, intermediate_size=14336, num_key_value_heads=8,
        max_position_embeddings=131072, rope_theta=500000.0, rope_scaling=_LLAMA3_SCALING,
        bos_token_id=128000, eos_token_id=(128001, 128008, 128009),
    ),
    # Small shapes for tests, the CPU default and benchmarks.
    "tiny": dict(
        vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
    ),
    "small": dict(
        vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
    ),
    "bench-150m": dict(
        vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048,
    ),
}


def from_hf(hf: Mapping[str, Any], origin: str) -> dict[str, Any]:
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise ValueError(f"{origin}: {flag}=true is not supported by this LLaMA implementation")
    return common_from_hf(hf, origin)


def to_hf(fields: Mapping[str, Any]) -> dict[str, Any]:
    del fields
    return {"attention_bias": False, "mlp_bias": False}


FAMILY = Family(model_type="llama", architecture="LlamaForCausalLM", gguf_architecture="llama",
                gguf_rope_permuted=True, from_hf=from_hf, to_hf=to_hf, presets=PRESETS)

__all__ = ("FAMILY", "PRESETS")
