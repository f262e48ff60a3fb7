"""Token cross-entropy through the LM head, chunked over positions: the [B, T, V] float32 logits
never exist whole.

`token_cross_entropy(model, hidden, targets, mask)` returns (sum of masked token cross-entropies,
number of target tokens), the same values as `optax.softmax_cross_entropy_with_integer_labels` over
`model.logits(hidden)`, and the same gradient with respect to `hidden`.

With a plain (frozen) head, the head and the loss run in a `lax.scan` over chunks of
`CHUNK_TOKENS` positions, and the forward pass of each chunk also computes its share of the
gradient, `d hidden = ((softmax - onehot) * mask) @ W` (a `jax.custom_vjp`): the backward pass only
scales that by the loss's cotangent. So per chunk there is one [b, c, V] logits block, no saved
logits or softmax for the backward pass, and no second head matmul (a remat of the chunk would
redo the head's forward dot). The head weight gets a zero cotangent: it is frozen (only
`LoRAParam`s are differentiated). On XLA:CPU at SmolLM2's 49,152-token vocabulary and 2 x 512
positions this takes the step's largest temporaries (~0.2 GB per f32 logits-sized array) down
to one chunk's (BENCHMARKS.md section 7).

A LoRA-wrapped head (adapters on `lm_head`) has trainable weights inside the head; it takes the
unchunked path, where autodiff sees the whole head.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

# Positions (over all rows of the batch) per chunk of the head + loss scan: a [CHUNK_TOKENS, V]
# f32 block (48 MB at V = 49,152); large enough for an efficient head matmul.
CHUNK_TOKENS = 256


def token_cross_entropy(model: nnx.Module, hidden: jax.Array, targets: jax.Array, mask: jax.Array, *,
                        chunk_tokens: int = CHUNK_TOKENS) -> tuple[jax.Array, jax.Array]:
    """(sum of masked token cross-entropies, sum of the mask), both f32, for final hidden states
    `hidden` [B, T, D], integer `targets` [B, T] and `mask` [B, T] (weights, 0 = not a target).

    chunk_tokens <= 0: the unchunked reference (`model.logits` over all positions + optax)."""
    mask = mask.astype(jnp.float32)
    head = model.head_weight()
    if head is None or chunk_tokens <= 0:
        logits = model.constrain(model.logits(hidden), ("batch", "length", "act_vocab"))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
        return jnp.sum(ce * mask), jnp.sum(mask)
    weight, hidden_axis = head
    compute = weight.dtype if weight.dtype != jnp.float32 and model.cpu_dot_forms else jnp.float32
    b, t = targets.shape
    chunk = max(1, min(t, chunk_tokens // b))
    total = _chunked_cross_entropy(hidden, weight, targets.astype(jnp.int32), mask, hidden_axis, chunk,
                                   jnp.dtype(compute).name)
    return total, jnp.sum(mask)


def _chunks(x: jax.Array, chunk: int) -> jax.Array:
    """[B, T, ...] -> [n, B, chunk, ...], T padded with zeros up to n * chunk."""
    b, t = x.shape[:2]
    n = -(-t // chunk)
    pad = [(0, 0), (0, n * chunk - t)] + [(0, 0)] * (x.ndim - 2)
    x = jnp.pad(x, pad)
    return jnp.moveaxis(x.reshape((b, n, chunk) + x.shape[2:]), 1, 0)


def _scan(hidden, weight, targets, mask, hidden_axis: int, chunk: int, compute: str, with_grad: bool):
    """Sum of masked CE over chunks; with_grad: also d(sum)/d(hidden) [B, T, D] in hidden's dtype."""
    b, t, _ = hidden.shape
    cdt = jnp.dtype(compute)
    w = weight.astype(cdt)
    vocab_axis = 1 - hidden_axis

    def body(total, xs):
        h, tgt, m = xs  # [B, c, D], [B, c], [B, c]
        logits = jax.lax.dot_general(h.astype(cdt), w, (((2,), (hidden_axis,)), ((), ())),
                                     preferred_element_type=jnp.float32)  # [B, c, V]
        lse = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
        total = total + jnp.sum((lse - target_logit) * m)
        if not with_grad:
            return total, None
        vocab_ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2)
        probs = jnp.exp(logits - lse[..., None])
        dlogits = (probs - (vocab_ids == tgt[..., None]).astype(jnp.float32)) * m[..., None]
        dh = jax.lax.dot_general(dlogits.astype(cdt), w, (((2,), (vocab_axis,)), ((), ())),
                                 preferred_element_type=jnp.float32)
        return total, dh.astype(hidden.dtype)

    xs = (_chunks(hidden, chunk), _chunks(targets, chunk), _chunks(mask, chunk))
    total, dh = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
    if not with_grad:
        return total, None
    dh = jnp.moveaxis(dh, 0, 1).reshape(b, -1, hidden.shape[-1])[:, :t]
    return total, dh


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _chunked_cross_entropy(hidden, weight, targets, mask, hidden_axis, chunk, compute):
    return _scan(hidden, weight, targets, mask, hidden_axis, chunk, compute, with_grad=False)[0]


def _chunked_cross_entropy_fwd(hidden, weight, targets, mask, hidden_axis, chunk, compute):
    total, dh = _scan(hidden, weight, targets, mask, hidden_axis, chunk, compute, with_grad=True)
    return total, (dh, weight, targets, mask)


def _chunked_cross_entropy_bwd(hidden_axis, chunk, compute, residuals, g):
    dh, weight, targets, mask = residuals
    del hidden_axis, chunk, compute
    # The head weight is frozen and the targets / mask are data: zero cotangents (dropped by XLA
    # as unused when nothing asks for them).
    return ((g * dh).astype(dh.dtype), jnp.zeros_like(weight),
            np.zeros(targets.shape, jax.dtypes.float0), jnp.zeros_like(mask))


_chunked_cross_entropy.defvjp(_chunked_cross_entropy_fwd, _chunked_cross_entropy_bwd)

__all__: Any = ("CHUNK_TOKENS", "token_cross_entropy")
