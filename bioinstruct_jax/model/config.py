"""The decoder's architecture: `LlamaConfig`, named as in HF's `config.json`, for every family.

LLaMA is the reference architecture, so the config keeps its name (as Levanter's and MaxText's
LLaMA configs are the base of their Mistral / Qwen ones); the other families are LLaMA plus the
fields `attention_bias` (Qwen2's q/k/v biases) and `sliding_window` (Mistral), with `model_type`
naming the family. Reading and writing HF `config.json` dispatches on `model_type` through the one
family table (`model.families`); the presets come from the same table.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

import jax.numpy as jnp

from bioinstruct_jax.model import families
from bioinstruct_jax.model.family import common_to_hf, read_hf_config

ROPE_TYPES = frozenset({"default", "linear", "llama3"})


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """HF `rope_scaling` / `rope_parameters`: `default`, `linear` or `llama3`."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture hyper-parameters, named as in HF's `config.json`."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int | None = None
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    # llama.cpp's `rope_freqs.weight` (LLaMA-3.1 / 3.2 GGUF files): per-pair divisors of the base
    # rotary frequencies; when set they replace the `llama3` rule (see rope_inverse_frequencies).
    rope_freq_factors: tuple[float, ...] | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: tuple[int, ...] = (2,)
    pad_token_id: int | None = None
    model_type: str = "llama"  # the family (`model.families`)
    attention_bias: bool = False  # biases on q/k/v_proj (Qwen2)
    sliding_window: int | None = None  # a token attends to itself and the W - 1 before it (Mistral)

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):  # from a family's HF converter or a stored signature
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}; set head_dim")
        if self.resolved_head_dim % 2:
            raise ValueError(f"head_dim={self.resolved_head_dim} must be even for rotary embeddings")
        if self.rope_scaling is not None and self.rope_scaling.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_scaling.rope_type={self.rope_scaling.rope_type!r} is not supported "
                             f"(supported: {', '.join(sorted(ROPE_TYPES))})")
        families.by_model_type(self.model_type)
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window={self.sliding_window} must be a positive number of tokens (or null)")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @classmethod
    def preset(cls, name: str) -> "LlamaConfig":
        """A named architecture of any family (see `model.families.PRESETS`)."""
        try:
            return cls(**families.PRESETS[name])
        except KeyError:
            raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(families.PRESETS))}") from None

    @classmethod
    def from_hf(cls, source: str | pathlib.Path | dict[str, Any]) -> "LlamaConfig":
        """From an HF `config.json` (a dict, the file, or the directory holding it) of any family."""
        hf, origin = read_hf_config(source)
        family = families.by_model_type(hf.get("model_type", "llama"), origin)
        return cls(**family.from_hf(hf, origin))

    def to_hf(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """An HF `config.json` dict that transformers reads back to this config (its family's class)."""
        family = families.by_model_type(self.model_type)
        fields = dataclasses.asdict(self)
        return {"architectures": [family.architecture], "model_type": family.model_type,
                **common_to_hf(fields, self.resolved_head_dim, torch_dtype), **family.to_hf(fields)}

    def num_params(self) -> int:
        """Total parameter count (embeddings counted once when tied, q/k/v biases included)."""
        d, f, v, hd = self.hidden_size, self.intermediate_size, self.vocab_size, self.resolved_head_dim
        qkv_out = hd * (self.num_attention_heads + 2 * self.num_key_value_heads)
        attn = d * hd * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)
        layer = attn + 3 * d * f + 2 * d + (qkv_out if self.attention_bias else 0)
        head = 0 if self.tie_word_embeddings else d * v
        return self.num_hidden_layers * layer + v * d + d + head


def dtype_from_name(name: str | Any) -> Any:
    """'bfloat16' / 'float32' / 'float16' -> a jnp dtype (dtypes pass through)."""
    if not isinstance(name, str):
        return name
    table = {"bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16, "float32": jnp.float32, "f32": jnp.float32,
             "float16": jnp.float16, "fp16": jnp.float16}
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(table)}") from None


__all__: Sequence[str] = ("LlamaConfig", "RopeScaling", "ROPE_TYPES", "dtype_from_name")
