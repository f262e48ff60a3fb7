"""The decoder-only language model every family runs, laid out like HF's `LlamaForCausalLM`.

`Llama` (LLaMA is the reference; Qwen2 and Mistral are the same modules switched by `LlamaConfig`
fields) holds embeddings, pre-norm decoder layers, the final norm and the LM head. Parameter paths
match HF's module names, so checkpoint import and export are names plus transposes.

Precision: parameters are stored in `param_dtype` (bf16 for big models); matmuls run in `dtype`;
RMSNorm statistics, attention softmax and the logits are always computed in float32.
Generation uses `KVCache` (`model.attention.init_cache`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bioinstruct_jax.model.attention import Attention, KVCache, cache_mask, segment_causal_mask
from bioinstruct_jax.model.config import LlamaConfig
from bioinstruct_jax.model.layers import (MLP, ActivationConstraint, Embedding, Linear, RMSNorm, default_cpu_dot_forms,
                                          identity_constraint)
from bioinstruct_jax.model.rope import rope_inverse_frequencies


class DecoderLayer(nnx.Module):
    """Pre-norm attention and MLP blocks with residuals."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs, param_dtype: Any, dtype: Any,
                 attention_impl: str | None = None, cpu_dot_forms: bool | None = None):
        norm_kw = dict(eps=config.rms_norm_eps, param_dtype=param_dtype, dtype=dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, **norm_kw)
        self.self_attn = Attention(config, rngs=rngs, param_dtype=param_dtype, dtype=dtype,
                                   attention_impl=attention_impl, cpu_dot_forms=cpu_dot_forms)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, **norm_kw)
        self.mlp = MLP(config.hidden_size, config.intermediate_size, rngs=rngs, param_dtype=param_dtype,
                       dtype=dtype, cpu_dot_forms=cpu_dot_forms)

    def __call__(self, x, positions, mask, inv_freq, constrain, cache_kv=None, cache_index=None):
        h, new_kv = self.self_attn(self.input_layernorm(x), positions, mask, inv_freq, constrain,
                                   cache_kv, cache_index)
        x = constrain(x + h, ("batch", "length", "act_embed"))
        x = constrain(x + self.mlp(self.post_attention_layernorm(x), constrain), ("batch", "length", "act_embed"))
        return x, new_kv


class Llama(nnx.Module):
    """The causal LM of every family: embeddings, decoder layers, final norm and LM head.

    cpu_dot_forms: whether bf16 dots take their XLA:CPU forms (see `model.layers`); None = on the
    CPU backend. The memory planner passes False to trace an accelerator's step on the CPU.
    """

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs, param_dtype: Any = jnp.float32,
                 dtype: Any = jnp.float32, remat: bool = False, attention_impl: str | None = None,
                 cpu_dot_forms: bool | None = None):
        self.config = config
        self.dtype = dtype
        self.remat = remat
        self.cpu_dot_forms = default_cpu_dot_forms() if cpu_dot_forms is None else cpu_dot_forms
        self.constrain: ActivationConstraint = identity_constraint
        kw = dict(rngs=rngs, param_dtype=param_dtype, dtype=dtype)
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, **kw)
        self.layers = nnx.List([
            DecoderLayer(config, attention_impl=attention_impl, cpu_dot_forms=self.cpu_dot_forms, **kw)
            for _ in range(config.num_hidden_layers)
        ])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, param_dtype=param_dtype, dtype=dtype)
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, axes=("embed", "vocab"), rngs=rngs,
                                  param_dtype=param_dtype, dtype=jnp.float32, cpu_dot_forms=self.cpu_dot_forms)

    def _mask(self, segment_ids: jax.Array, cache: KVCache | None, prefill: bool):
        """(attention mask, cache index, the cache's new `valid`) for T new tokens."""
        window = self.config.sliding_window
        if cache is None:
            return segment_causal_mask(segment_ids, window), None, None
        valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, segment_ids > 0, cache.index, axis=1)
        if prefill:
            return segment_causal_mask(segment_ids, window), cache.index, valid
        return cache_mask(valid, cache.index, segment_ids.shape[1], window), cache.index, valid

    def hidden_states(self, input_ids: jax.Array, positions: jax.Array | None = None,
                      segment_ids: jax.Array | None = None, cache: KVCache | None = None,
                      prefill: bool = False):
        """Final-norm hidden states [B, T, D] (and the updated cache when one is given).

        prefill=True promises an empty cache (index 0, nothing valid): the T tokens are written to
        it but attend only to each other (T x T), not to the S - T empty slots.
        """
        b, t = input_ids.shape
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        constrain = self.constrain
        inv_freq = rope_inverse_frequencies(self.config)
        mask, cache_index, valid = self._mask(segment_ids, cache, prefill)
        x = constrain(self.embed_tokens(input_ids), ("batch", "length", "act_embed"))
        new_keys, new_values = [], []
        for i, layer in enumerate(self.layers):
            cache_kv = None if cache is None else (cache.keys[i], cache.values[i])
            if self.remat and cache is None:
                x, _ = nnx.remat(lambda lyr, h: lyr(h, positions, mask, inv_freq, constrain))(layer, x)
                kv = None
            else:
                x, kv = layer(x, positions, mask, inv_freq, constrain, cache_kv, cache_index)
            if kv is not None:
                new_keys.append(kv[0])
                new_values.append(kv[1])
        x = self.norm(x)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(keys=tuple(new_keys), values=tuple(new_values), valid=valid,
                                index=cache.index + t)
        return x, new_cache

    def head_weight(self) -> tuple[jax.Array, int] | None:
        """(weight, index of its hidden axis) of a plain LM head: the tied embedding [V, D] (axis 1)
        or `lm_head`'s kernel [D, V] (axis 0); None for a LoRA-wrapped head, which keeps its own path."""
        if self.config.tie_word_embeddings:
            return self.embed_tokens.embedding[...], 1
        if type(self.lm_head) is Linear:
            return self.lm_head.kernel[...], 0
        return None

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Float32 logits from final hidden states.

        On XLA:CPU with bf16 head weights, the dot reads them as they are (hidden states rounded to
        bf16, f32 accumulation, as transformers' bf16 model computes its head): an f32 head dot
        would make XLA keep an f32 copy of the head and read it on every decode step.
        """
        w, w_in_axis = self.head_weight() or (None, 0)
        if w is not None and w.dtype != jnp.float32 and self.cpu_dot_forms:
            dims = (((hidden.ndim - 1,), (w_in_axis,)), ((), ()))
            return jax.lax.dot_general(hidden.astype(w.dtype), w, dims, preferred_element_type=jnp.float32)
        if self.config.tie_word_embeddings:
            return self.embed_tokens.attend(hidden)
        return self.lm_head(hidden.astype(jnp.float32))

    def __call__(self, input_ids: jax.Array, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, cache: KVCache | None = None):
        """Logits [B, T, V] in float32; with a cache, returns (logits, new_cache)."""
        hidden, new_cache = self.hidden_states(input_ids, positions, segment_ids, cache)
        logits = self.constrain(self.logits(hidden), ("batch", "length", "act_vocab"))
        return logits if cache is None else (logits, new_cache)


def count_params(model: nnx.Module, variable_type: type = nnx.Param) -> int:
    """Number of scalars in variables of `variable_type`."""
    state = nnx.state(model, variable_type)
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(state))


def padded_positions(segment_ids: jax.Array) -> jax.Array:
    """Positions 0, 1, ... counted over real tokens only (for left-padded rows)."""
    real = (segment_ids > 0).astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(real, axis=1) - 1, 0)


__all__ = ("DecoderLayer", "Llama", "count_params", "padded_positions")
