"""Rotary position embeddings (HF's half-split layout) and their frequency rules: `default`,
`linear` and `llama3` scaling, or llama.cpp's per-pair frequency factors (`rope_freqs.weight`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bioinstruct_jax.model.config import LlamaConfig


def rope_inverse_frequencies(config: LlamaConfig) -> jax.Array:
    """Per-pair rotary frequencies, with the `linear` or `llama3` rule (or GGUF frequency factors) applied."""
    dim = config.resolved_head_dim
    inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    scaling = config.rope_scaling
    if config.rope_freq_factors is not None:  # as llama.cpp: base / factors, then a linear scale
        inv_freq = inv_freq / jnp.asarray(config.rope_freq_factors, jnp.float32)
        return inv_freq / scaling.factor if scaling is not None and scaling.rope_type == "linear" else inv_freq
    if scaling is None or scaling.rope_type == "default":
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    # llama3: long wavelengths are slowed by `factor`, short ones kept, the middle band blended.
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, blended, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate x [B, T, heads, head_dim] by positions [B, T] (HF half-split layout)."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


__all__ = ("rope_inverse_frequencies", "apply_rope")
