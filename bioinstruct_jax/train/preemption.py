"""SIGTERM (TPU maintenance event, Spot preemption) -> one checkpoint at a step all processes agree on.

One process: a Python SIGTERM handler sets a flag that the training loop reads at the next step
boundary, then it saves and exits 0.

Several processes: a process that acted on its own flag would enter Orbax's collective save at a
different step from the others, and the job would hang. There, JAX's distributed runtime already
listens for SIGTERM (its preemption service, on by default with `jax.distributed.initialize()`)
and shares the notice through the coordination service; `reached(step)` asks for the sync point
(`CheckpointManager.reached_preemption` -> `multihost_utils.reached_preemption_sync_point`), which
is True on every process at the same step. No Python handler is installed then: it would replace
JAX's notifier. Every process must call `reached` at every step, in the same order. This is what
MaxText and Levanter do on multi-host slices.
"""

from __future__ import annotations

import signal
from typing import Callable

import jax


class PreemptionWatch:
    """Context manager: `reached(step)` says whether to checkpoint and stop after `step`.

    sync_point: the cross-process question (`RunCheckpointer.reached_preemption`); used when
    there are several processes.
    """

    def __init__(self, sync_point: Callable[[int], bool] | None = None):
        self._sync_point = sync_point
        self.synced = False
        self.requested = False
        self._previous = None

    def __enter__(self) -> "PreemptionWatch":
        self.synced = self._sync_point is not None and jax.process_count() > 1
        if not self.synced:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # not the main thread: no handler
                self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def reached(self, step: int) -> bool:
        if self.synced:
            self.requested = bool(self._sync_point(step))
        return self.requested

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


__all__ = ["PreemptionWatch"]
