"""Multi-process start-up and the per-host side of a global batch.

`maybe_initialize_distributed()` calls `jax.distributed.initialize()` when this process is one of
several, or runs on a Cloud TPU VM:
  - explicit coordinator variables (JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID):
    GPU hosts and the CPU tests; the values are passed on as given;
  - a Cloud TPU VM (TPU chips on the PCI bus, or the GKE/Megascale TPU variables): called with no
    arguments, so JAX's own cluster detection reads the slice from the GCE metadata server (or the
    GKE variables). Like MaxText, this is done on every TPU VM, a single-host one included
    (there it is a one-process job);
  - a SLURM job step with more than one task.
Otherwise (a laptop, one GPU host) it does nothing. It must run before anything touches a device.

A global batch of B rows is assembled from per-host rows: `host_batch_rows` says which rows of
each global batch this process loads (the rows its devices hold under the batch sharding, per
micro-batch when gradients are accumulated), and `global_batch` turns the host's numpy arrays into
one global `jax.Array` with `jax.make_array_from_process_local_data`. With one process both are the
identity, so the same code runs everywhere. `any_process` and `is_primary` are the two
cross-host questions the training loop asks (does any host still have a validation batch; may
this process write the logs).
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

from bioinstruct_jax.parallel.sharding import batch_sharding

log = logging.getLogger(__name__)

# TPU chips on the PCI bus: Google's vendor id and a TPU device id (v2/v3, v4, v5p, v5e, v6e, 7x;
# the table of jax/_src/hardware_utils.py). Other Google devices (the gVNIC network card of
# GPU VMs) share the vendor id, so both must match.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})


def _count_hosts(value: str | None) -> int:
    return len([h for h in (value or "").split(",") if h.strip()])


def tpu_chips_on_host(pci_root: str = "/sys/bus/pci/devices") -> int:
    """How many TPU chips this machine has, read from the PCI bus (no JAX device is touched)."""
    def read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return ""

    return sum(1 for device in glob.glob(os.path.join(pci_root, "*"))
               if read(os.path.join(device, "vendor")) == _GOOGLE_PCI_VENDOR
               and read(os.path.join(device, "device")) in _TPU_PCI_DEVICES)


def detect_environment(env: Mapping[str, str] | None = None, *, tpu_chips: int | None = None
                       ) -> tuple[str | None, dict[str, Any]]:
    """(kind, initialize kwargs) when `jax.distributed.initialize()` should run, else (None, {}).

    kind is "coordinator", "tpu" or "slurm". With explicit coordinator variables the kwargs carry
    them; for TPU and SLURM JAX's own cluster detection fills everything in. `tpu_chips`: the TPU
    chips of this host (default: read from the PCI bus).
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
    platforms = env.get("JAX_PLATFORMS", "").lower()
    if (not platforms or "tpu" in platforms) and (tpu_chips_on_host() if tpu_chips is None else tpu_chips) > 0:
        return "tpu", {}  # a Cloud TPU VM (one host, or one worker of a slice): JAX reads the metadata
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_PROCID") is not None:
        return "slurm", {}
    return None, {}


def maybe_initialize_distributed(env: Mapping[str, str] | None = None, **overrides: Any) -> bool:
    """Initialise multi-process JAX when launched as one of several processes or on a TPU VM;
    returns whether it did (False also when it already was)."""
    if jax.distributed.is_initialized():
        return False
    kind, kwargs = detect_environment(env)
    if kind is None:
        return False
    kwargs.update(overrides)
    log.info("initialising jax.distributed (%s launch): %s", kind, kwargs or "auto-detected")
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True


def refuse_multi_process(program: str, env: Mapping[str, str] | None = None) -> None:
    """ValueError with a one-line reason (`error: ...` through cli/errors.run) when `program` (eval,
    generate, export: one-process tools) is started as one of several processes; they run once,
    on one host."""
    env = os.environ if env is None else env
    kind, kwargs = detect_environment(env, tpu_chips=0)  # a single TPU VM is fine; a slice's variables are not
    if kind is None:
        return
    where = (f"process {kwargs['process_id']} of {kwargs['num_processes']} (JAX_NUM_PROCESSES / JAX_PROCESS_ID)"
             if kind == "coordinator" else f"one process of a multi-host {kind} launch")
    raise ValueError(f"python -m {program} runs as a single process, but this is {where}; run it once, "
                     f"on one host (unset those variables): it uses that host's devices, and checkpoints "
                     f"written by several processes load there")


def is_primary() -> bool:
    """Whether this process writes the run's logs (process 0, as in MaxText and Levanter)."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """True when `flag` is true on at least one process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.asarray(multihost_utils.process_allgather(np.array([int(flag)], np.int32))).any())


def in_lockstep(batches: Any, make_padding: Any) -> Any:
    """The batches of `batches` for as long as any process still has one; a process that ran out
    gets `make_padding()` (a batch with a zero loss mask), so every process runs the same number
    of collective steps. With one process: the batches as they are."""
    it = iter(batches)
    while True:
        batch = next(it, None)
        if not any_process(batch is not None):
            return
        yield make_padding() if batch is None else batch


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


def host_batch_rows(mesh: jax.sharding.Mesh, batch_size: int, grad_accum: int = 1) -> list[int]:
    """The rows of each global batch of `batch_size` rows that this process loads, in local order.

    The batch is split into `grad_accum` micro-batches of consecutive rows; within each, this
    process holds the rows its devices own under `parallel.batch_sharding` (a contiguous block,
    or every row when the batch axis is not split across processes). Loading exactly these rows,
    micro-batch by micro-batch, makes the global batch (and each micro-batch) the one a single
    process would build from the same record stream.
    """
    if batch_size % grad_accum:
        raise ValueError(f"data.batch_size={batch_size} is not divisible by optim.grad_accum={grad_accum}")
    micro = batch_size // grad_accum
    owned: set[int] = set()
    for index in batch_sharding(mesh, ndim=2).addressable_devices_indices_map((micro, 1)).values():
        owned.update(range(*index[0].indices(micro)))
    rows = sorted(owned)
    if not rows or rows != list(range(rows[0], rows[-1] + 1)):
        raise ValueError(f"process {jax.process_index()} holds rows {rows} of a micro-batch of {micro}: the mesh "
                         f"must give each process a contiguous block of the batch (order the devices host by host)")
    return [j * micro + r for j in range(grad_accum) for r in rows]


def global_batch(local_arrays: Any, sharding: jax.sharding.Sharding, rows_axis: int, global_rows: int) -> Any:
    """This host's numpy arrays -> global jax.Arrays with `sharding`, `global_rows` along `rows_axis`.

    Every process must call it with its own rows (`host_batch_rows`); with one process it is a
    plain transfer to the devices.
    """
    def one(local):
        local = np.asarray(local)
        shape = list(local.shape)
        shape[rows_axis] = global_rows
        return jax.make_array_from_process_local_data(sharding, local, tuple(shape))

    return jax.tree.map(one, local_arrays)


def global_batch_from_host(local_arrays: Any, mesh: jax.sharding.Mesh, rules=None) -> Any:
    """Per-host [local_batch, length, ...] numpy arrays -> global jax.Arrays sharded over the batch
    (each host holding an equal contiguous share, `host_batch_slice`)."""
    def one(local):
        local = np.asarray(local)
        sharding = batch_sharding(mesh, ndim=local.ndim) if rules is None else batch_sharding(mesh, rules, local.ndim)
        return global_batch(local, sharding, 0, local.shape[0] * jax.process_count())

    return jax.tree.map(one, local_arrays)


__all__ = ["detect_environment", "maybe_initialize_distributed", "tpu_chips_on_host", "is_primary", "any_process",
           "in_lockstep", "refuse_multi_process",
           "host_batch_slice", "host_batch_rows", "global_batch", "global_batch_from_host"]
