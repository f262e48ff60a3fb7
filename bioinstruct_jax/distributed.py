"""Multi-host start-up and per-host data helpers.

`maybe_initialize_distributed()` calls `jax.distributed.initialize()` exactly when this process is
one of several: a multi-worker TPU pod slice (TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES with
more than one host, or a Megascale multislice job), explicit coordinator variables
(JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID), or a SLURM job step with more
than one task. On one host it does nothing, so the same entry point runs on a laptop, a single
TPU VM and a pod. It must run before anything touches a JAX device.

Each host feeds only its own rows: `host_batch_slice` says which rows of the global batch this
process loads, and `global_batch_from_host` assembles the per-host arrays into one global
array sharded by `parallel.batch_sharding`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import jax
import numpy as np

from bioinstruct_jax.parallel import batch_sharding

log = logging.getLogger(__name__)


def _count_hosts(value: str | None) -> int:
    return len([h for h in (value or "").split(",") if h.strip()])


def detect_environment(env: Mapping[str, str] | None = None) -> tuple[str | None, dict[str, Any]]:
    """(kind, initialize kwargs) for a multi-process launch, or (None, {}) on a single host.

    kind is "coordinator", "tpu" or "slurm". With explicit coordinator variables the kwargs carry
    them; for TPU and SLURM JAX's own cluster detection fills everything in.
    """
    env = os.environ if env is None else env
    if env.get("JAX_COORDINATOR_ADDRESS") and env.get("JAX_NUM_PROCESSES") and env.get("JAX_PROCESS_ID"):
        try:
            num, pid = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
        except ValueError:
            raise ValueError(
                f"JAX_NUM_PROCESSES={env['JAX_NUM_PROCESSES']!r} and JAX_PROCESS_ID={env['JAX_PROCESS_ID']!r} "
                f"must be integers"
            ) from None
        if not 0 <= pid < num:
            raise ValueError(f"JAX_PROCESS_ID={pid} is outside [0, JAX_NUM_PROCESSES={num})")
        if num == 1:
            return None, {}
        return "coordinator", dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"], num_processes=num,
                                   process_id=pid)
    hosts = max(_count_hosts(env.get("TPU_WORKER_HOSTNAMES")), _count_hosts(env.get("TPU_PROCESS_ADDRESSES")))
    if hosts > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS") or int(env.get("MEGASCALE_NUM_SLICES", "1") or 1) > 1:
        return "tpu", {}
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_PROCID") is not None:
        return "slurm", {}
    return None, {}


def maybe_initialize_distributed(env: Mapping[str, str] | None = None, **overrides: Any) -> bool:
    """Initialise multi-host JAX when launched on several hosts; returns whether it did."""
    kind, kwargs = detect_environment(env)
    if kind is None:
        return False
    kwargs.update(overrides)
    log.info("initialising jax.distributed (%s launch): %s", kind, kwargs or "auto-detected")
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True


def host_batch_slice(global_batch_size: int, process_index: int | None = None,
                     process_count: int | None = None) -> slice:
    """Rows [start, stop) of the global batch that this host loads (contiguous, equal shares)."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if global_batch_size % count:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the number of hosts ({count})"
        )
    per_host = global_batch_size // count
    return slice(index * per_host, (index + 1) * per_host)


def global_batch_from_host(local_arrays: Any, mesh: jax.sharding.Mesh, rules=None) -> Any:
    """Per-host [local_batch, length, ...] numpy arrays -> global jax.Arrays sharded over the batch.

    Host i's rows become rows host_batch_slice(global).start.. of the global array (the layout
    `make_array_from_process_local_data` uses with a batch-sharded spec on a host-major mesh).
    """
    def one(local):
        local = np.asarray(local)
        sharding = batch_sharding(mesh, ndim=local.ndim) if rules is None else batch_sharding(mesh, rules, local.ndim)
        global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
        return jax.make_array_from_process_local_data(sharding, local, global_shape)

    return jax.tree.map(one, local_arrays)


__all__ = ["detect_environment", "maybe_initialize_distributed", "host_batch_slice", "global_batch_from_host"]
