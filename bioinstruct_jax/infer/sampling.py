"""Next-token selection for generation: greedy, temperature, top-k and top-p (nucleus) sampling.

`SamplingConfig` holds the user's choice; `sample_next` turns a [B, V] float32 logits array into
[B] token ids. Temperature, top_k and top_p enter the traced computation as scalars, so changing
their values never recompiles; only the two structural choices (greedy or not, filtering or not)
are static (`SamplingConfig.static_mode`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 = greedy (argmax); top_k 0 = off; top_p 1.0 = off.

    With temperature > 0 the logits are divided by the temperature, then restricted to the top_k
    most likely tokens, then to the smallest set whose probability reaches top_p (HF's order).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise ValueError(f"sampling.temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling.top_p must be in (0, 1] (1 = off), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def static_mode(self) -> tuple[bool, bool]:
        """(greedy, filtered): the only parts of the config that change the compiled program."""
        return self.greedy, (not self.greedy) and (self.top_k > 0 or self.top_p < 1.0)

    def traced_values(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(temperature, top_k, top_p) as device scalars (jit arguments, not constants)."""
        return (jnp.float32(max(self.temperature, 1e-6)), jnp.int32(self.top_k), jnp.float32(self.top_p))


def filter_logits(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Set to -inf every logit outside the top_k (0 = all) and then outside the top_p nucleus.

    The nucleus is the smallest set of most likely tokens whose probability (after the top-k cut,
    renormalised) reaches top_p; top_p >= 1 keeps everything. Ties at the cut-off are kept.
    """
    vocab = logits.shape[-1]
    ordered = -jnp.sort(-logits, axis=-1)  # descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    rank = jnp.arange(vocab)
    ordered = jnp.where(rank < k, ordered, NEG_INF)
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = ((mass_before < top_p) | (top_p >= 1.0)) & (rank < k)
    keep = keep.at[..., 0].set(True)
    n_keep = jnp.sum(keep, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(ordered, n_keep - 1, axis=-1)
    return jnp.where(logits < cutoff, NEG_INF, logits)


def sample_next(logits: jax.Array, key: jax.Array | None, *, greedy: bool, filtered: bool,
                temperature: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """[B, V] logits -> [B] int32 token ids. `greedy` and `filtered` are static (Python bools)."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits.astype(jnp.float32) / temperature
    if filtered:
        scaled = filter_logits(scaled, top_k, top_p)
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)


__all__ = ["SamplingConfig", "filter_logits", "sample_next"]
