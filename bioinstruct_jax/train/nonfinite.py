"""Stop training on a NaN/Inf loss or gradient, without an extra host sync per step.

`NonFiniteGuard.update(step, metrics)` folds each step's loss and gradient norm into two device
scalars (the first non-finite step, the number of non-finite steps) with a tiny jitted function
that is dispatched asynchronously like the step itself, so the loop waits for nothing new. The
guard is read on the host only where the loop already synchronises: when it fetches metrics for
the log (`fetch` returns the metrics and the guard state in one `device_get`) and before every
checkpoint save (`check`), so a non-finite state is never saved: the last good checkpoint stays
the newest.

With `train.skip_nonfinite_batches = N > 0` the step itself drops a non-finite update on the
device (`train_step.build_train_step(skip_nonfinite=True)`) and the run goes on until more than N
batches were skipped, as large-scale trainers do with loss spikes; each skip is reported.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class NonFiniteError(ValueError):
    """Training produced a NaN/Inf loss or gradient (names the step)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


@jax.jit
def _fold(state: jax.Array, step: jax.Array, loss: jax.Array, grad_norm: jax.Array) -> jax.Array:
    """[first bad step (0 = none), bad steps so far, last bad step]."""
    bad = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
    first = jnp.where((state[0] == 0) & bad, step, state[0])
    return jnp.stack([first, state[1] + bad.astype(state.dtype), jnp.where(bad, step, state[2])])


class NonFiniteGuard:
    """Device-side record of non-finite steps; `check` raises `NonFiniteError` past the budget."""

    def __init__(self, skip_budget: int = 0):
        self.skip_budget = skip_budget
        self.reported = 0
        # numpy in, so the first fold places the state where the metrics live (one device, a mesh,
        # or replicated across processes); from then on it stays there.
        self._state = np.zeros((3,), np.int32)

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        self._state = _fold(self._state, np.int32(step), metrics["loss"], metrics["grad_norm"])

    def fetch(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """`jax.device_get(metrics)` with the guard state in the same transfer; checks it."""
        host, state = jax.device_get((metrics, self._state))
        self._check_state(state)
        return host

    def check(self) -> None:
        self._check_state(jax.device_get(self._state))

    def _check_state(self, state: Any) -> None:
        first, count, last = (int(x) for x in state)
        if count == 0:
            return
        if count > self.skip_budget and self.skip_budget == 0:
            raise NonFiniteError(
                f"training stopped: the loss or gradient became NaN/Inf at step {first}; no checkpoint from that "
                f"step on was saved (the newest checkpoint is the last good one). Lower optim.lr, check the data "
                f"around that step, or set train.skip_nonfinite_batches=N to skip up to N such batches", step=first)
        if count > self.skip_budget:
            raise NonFiniteError(
                f"training stopped at step {last}: {count} batches had a NaN/Inf loss or gradient (first at step "
                f"{first}), more than train.skip_nonfinite_batches={self.skip_budget}; nothing from step {last} "
                f"on was saved", step=last)
        if count > self.reported:
            print(f"warning: skipped {count - self.reported} batch(es) with a NaN/Inf loss or gradient "
                  f"(last at step {last}; {count} of at most {self.skip_budget} so far)")
            self.reported = count
