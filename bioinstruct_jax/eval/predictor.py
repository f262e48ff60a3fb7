"""The model side of evaluation: the `Predictor` protocol.

The evaluation code only ever talks to a `Predictor`. The JAX implementation lives in
`bioinstruct_jax.infer.predictor` (`JaxPredictor`); tests use small deterministic doubles.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


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

