"""Self-attention shared by every family: grouped-query heads with rotary embeddings, optional
q/k/v biases (Qwen2), the attention masks (segments, causality, an optional sliding window
(Mistral)) and the KV cache of cached decoding.

Attention masking is driven by `segment_ids` ([B, T] int, 0 = padding): a token attends
causally to earlier tokens of the same segment. That one mechanism covers right padding, left
padding and packed sequences. A sliding window of W keeps a query from keys more than W - 1 slots
back, counted in token slots as transformers counts cache positions (left padding included), so a
window shorter than the sequence is honoured by the training forward and by cached decoding alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bioinstruct_jax.model.config import LlamaConfig
from bioinstruct_jax.model.layers import ActivationConstraint, AxisNames, Linear
from bioinstruct_jax.model.rope import apply_rope


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values per layer for cached decoding, stored in the layouts the attention dots
    read without a transpose: keys [B, kv_heads, head_dim, S], values [B, kv_heads, S, head_dim].

    `valid[b, s]` says slot s holds a real (non-padding) token; `index` is the next slot to write.
    (With a [B, S, heads, head_dim] cache, XLA:CPU copied the whole cache of every layer into these
    layouts on every decode step: two full-cache copies per layer per token.)
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    valid: jax.Array
    index: jax.Array

    @property
    def max_length(self) -> int:
        return self.valid.shape[1]


# Logical axes of the cached keys / values (for sharding constraints).
CACHE_KEY_AXES: AxisNames = ("batch", "act_kv_heads", None, "length")
CACHE_VALUE_AXES: AxisNames = ("batch", "act_kv_heads", "length", None)


def init_cache(config: LlamaConfig, batch_size: int, max_length: int, dtype: Any = jnp.bfloat16) -> KVCache:
    """An empty cache for `batch_size` rows of at most `max_length` tokens."""
    kv, hd, n = config.num_key_value_heads, config.resolved_head_dim, config.num_hidden_layers
    return KVCache(
        keys=tuple(jnp.zeros((batch_size, kv, hd, max_length), dtype) for _ in range(n)),
        values=tuple(jnp.zeros((batch_size, kv, max_length, hd), dtype) for _ in range(n)),
        valid=jnp.zeros((batch_size, max_length), jnp.bool_),
        index=jnp.zeros((), jnp.int32),
    )


def segment_causal_mask(segment_ids: jax.Array, sliding_window: int | None = None) -> jax.Array:
    """[B, 1, T, T] bool: same non-zero segment, key position <= query position (and, with a
    sliding window W, query - key < W).

    Padding queries (segment 0) get a self-attention entry so their softmax stays finite; their
    outputs are never used.
    """
    t = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((t, t), jnp.bool_))
    if sliding_window is not None:
        causal = causal & ~jnp.tril(jnp.ones((t, t), jnp.bool_), -sliding_window)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = (segment_ids > 0)[:, None, :]
    mask = causal[None] & same & real
    mask = mask | jnp.eye(t, dtype=jnp.bool_)[None]
    return mask[:, None]


def cache_mask(valid: jax.Array, index: jax.Array, t: int, sliding_window: int | None = None) -> jax.Array:
    """[B, 1, T, S] bool for T new tokens written at slots index..index+T-1 of the cache."""
    s = valid.shape[1]
    query_slot = index + jnp.arange(t)[:, None]
    key_slot = jnp.arange(s)[None, :]
    in_reach = key_slot <= query_slot
    if sliding_window is not None:
        in_reach = in_reach & (query_slot - key_slot < sliding_window)
    mask = in_reach[None] & valid[:, None, :]
    mask = mask | (key_slot == query_slot)[None]
    return mask[:, None]


class Attention(nnx.Module):
    """Multi-head / grouped-query self-attention with rotary embeddings."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs, param_dtype: Any, dtype: Any,
                 attention_impl: str | None = None, cpu_dot_forms: bool | None = None):
        d, hd = config.hidden_size, config.resolved_head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = hd
        self.attention_impl = attention_impl
        kw = dict(rngs=rngs, param_dtype=param_dtype, dtype=dtype, cpu_dot_forms=cpu_dot_forms)
        qkv_bias = config.attention_bias
        self.q_proj = Linear(d, self.num_heads * hd, axes=("embed", "heads"), use_bias=qkv_bias, **kw)
        self.k_proj = Linear(d, self.num_kv_heads * hd, axes=("embed", "kv_heads"), use_bias=qkv_bias, **kw)
        self.v_proj = Linear(d, self.num_kv_heads * hd, axes=("embed", "kv_heads"), use_bias=qkv_bias, **kw)
        self.o_proj = Linear(self.num_heads * hd, d, axes=("heads", "embed"), **kw)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array, inv_freq: jax.Array,
                 constrain: ActivationConstraint, cache_kv: tuple[jax.Array, jax.Array] | None = None,
                 cache_index: jax.Array | None = None):
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        q = constrain(apply_rope(q, positions, inv_freq), ("batch", "length", "act_heads", None))
        k = constrain(apply_rope(k, positions, inv_freq), ("batch", "length", "act_kv_heads", None))
        v = constrain(v, ("batch", "length", "act_kv_heads", None))
        new_kv = None
        if cache_kv is not None:
            ck, cv = cache_kv  # [B, K, H, S], [B, K, S, H]
            ck = jax.lax.dynamic_update_slice_in_dim(ck, k.transpose(0, 2, 3, 1).astype(ck.dtype), cache_index, axis=3)
            cv = jax.lax.dynamic_update_slice_in_dim(cv, v.transpose(0, 2, 1, 3).astype(cv.dtype), cache_index, axis=2)
            new_kv = (ck, cv)
            if mask.shape[-1] == t != ck.shape[-1]:
                cache_kv = None  # a prefill into an empty cache: attend over the new tokens only
        if cache_kv is not None and self.attention_impl in (None, "xla"):
            # A cache wider than the compute dtype (f32 cache, bf16 weights on XLA:CPU) is read as
            # it is stored; converting it would rewrite the whole cache on every step.
            cdt = jnp.promote_types(q.dtype, ck.dtype)
            out = _cached_attention(q.astype(cdt), ck.astype(cdt), cv.astype(cdt), mask).astype(q.dtype)
        elif cache_kv is not None:
            k, v = ck.transpose(0, 3, 1, 2).astype(q.dtype), cv.transpose(0, 2, 1, 3).astype(q.dtype)
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.attention_impl)
        elif self.attention_impl in (None, "xla"):
            out = _einsum_attention(q, k, v, mask)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.attention_impl)
        out = constrain(out, ("batch", "length", "act_heads", None))
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim)), new_kv


def _einsum_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax attention, q [B,T,N,H], k/v [B,S,K,H], mask [B,1,T,S] -> [B,T,N,H].

    What `jax.nn.dot_product_attention(implementation="xla")` computes (f32 logits and softmax,
    GQA by grouping heads), but with heads moved next to the batch before the einsums, so that
    every dot has leading batch dimensions. On XLA:CPU that avoids the transposes and the slow
    fused softmax-backward dots of the generic path (scripts/benchmark.py, BENCHMARKS.md).
    """
    b, t, n, h = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, n // kv, h).transpose(0, 2, 3, 1, 4)  # [B,K,G,T,H]
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B,K,S,H]
    scores = jnp.einsum("bkgth,bksh->bkgts", qg, kt, preferred_element_type=jnp.float32) * (h ** -0.5)
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bksh->bkgth", probs, vt)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _cached_attention(q: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array) -> jax.Array:
    """`_einsum_attention` over a `KVCache` layer: q [B,T,N,H], keys [B,K,H,S], values [B,K,S,H],
    mask [B,1,T,S] -> [B,T,N,H]. Both dots read the cache in its stored layout."""
    b, t, n, h = q.shape
    kv = keys.shape[1]
    qg = q.reshape(b, t, kv, n // kv, h).transpose(0, 2, 3, 1, 4)  # [B,K,G,T,H]
    scores = jnp.einsum("bkgth,bkhs->bkgts", qg, keys, preferred_element_type=jnp.float32) * (h ** -0.5)
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
    out = jnp.einsum("bkgts,bksh->bkgth", probs, values)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


__all__ = ("KVCache", "CACHE_KEY_AXES", "CACHE_VALUE_AXES", "init_cache", "segment_causal_mask", "cache_mask",
           "Attention")
