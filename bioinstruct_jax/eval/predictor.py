"""The model side of evaluation: the `Predictor` protocol and the one call that builds it.

The evaluation code only ever talks to a `Predictor`. The JAX implementation lives in
`bioinstruct_jax.infer.predictor` (`JaxPredictor`); tests use small deterministic doubles.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from bioinstruct_jax.infer import predictor as jax_predictor


@runtime_checkable
class Predictor(Protocol):
    """Batched text generation and continuation scoring.

    generate: one completion per prompt (the text after the prompt only, without the prompt),
      greedy unless the implementation was configured otherwise, cut at the first occurrence of
      any `stop` string (the stop string itself removed) or at EOS or `max_new_tokens`.
    score: for each (prompt, continuation) pair, the sum of log-probabilities of the
      continuation's tokens given the prompt (natural log, <= 0).
    """

    def generate(self, prompts: list[str], *, max_new_tokens: int,
                 stop: list[str] | None = None) -> list[str]: ...

    def score(self, prompts: list[str], continuations: list[str]) -> list[float]: ...


def load_predictor(model: str, lora: str | None = None, **kwargs: Any) -> Predictor:
    """Build the JAX predictor for `model` (HF checkpoint dir or our Orbax checkpoint) with an
    optional LoRA checkpoint. Keyword arguments (dtype, mesh settings, batch size, max length,
    ...) are passed through unchanged to `bioinstruct_jax.infer.predictor.load_predictor`."""
    return jax_predictor.load_predictor(model, lora=lora, **kwargs)
