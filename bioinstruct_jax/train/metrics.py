"""Training logs and throughput: metrics.jsonl, TensorBoard events, loss-curve PNG, FLOPs and MFU.

The logs live under the run's output_dir, local or gs:// (`MetricsLogger`).

FLOP convention for LoRA training (model FLOPs, rematerialisation not counted), per target
position of a [B, T] batch:
  forward                 2 * N_matmul                     (every frozen + LoRA matmul weight)
  backward, activations   2 * N_matmul                     (gradients must flow down through every
                                                            frozen layer to reach lower adapters)
  backward, weights       2 * N_lora                       (only adapters get weight gradients)
  attention               3 * 4 * L * T * H * d_head       (QK^T and AV, forward + 2x backward,
                                                            no causal discount, as in PaLM's MFU)
so FLOPs/token = 4 * N_frozen_matmul + 6 * N_lora + 12 * L * T * H * d_head. N_matmul excludes the
embedding table (a gather), includes the LM head. With full fine-tuning this reduces to the usual
6N + attention. Tokens = all positions of the batch (padding included: the device computes them).

Peak FLOP/s per device come from `parallel.accelerators` by accelerator kind (bf16 dense, per JAX device:
one TensorCore on TPU v2/v3, one chip from v4 on, one GPU); on a CPU the peak is measured once per
process by timing a large f32 matmul on all cores.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bioinstruct_jax.config.storage import LocalMirror, is_remote
from bioinstruct_jax.data.journal import read_jsonl_tail_safe, write_text_atomic
from bioinstruct_jax.model.lora import LoRAParam
from bioinstruct_jax.parallel import accelerators

_MEASURED_CPU_PEAK: list[float] = []
METRICS_FILE = "metrics.jsonl"


def matmul_flops(n: int = 1024, repeats: int = 3, dtype: Any = jnp.float32, device: Any = None) -> float:
    """FLOP/s of a jitted n x n matmul in `dtype` on `device` (default: the first CPU device), best
    of `repeats` timed calls after one compiling call."""
    device = jax.devices("cpu")[0] if device is None else device
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def measure_cpu_peak(n: int = 1024, repeats: int = 3) -> float:
    """FLOP/s of an n x n f32 matmul on this host (`matmul_flops`), measured once per process."""
    if not _MEASURED_CPU_PEAK:
        _MEASURED_CPU_PEAK.append(matmul_flops(n, repeats))
    return _MEASURED_CPU_PEAK[0]


def peak_flops_per_device(accelerator: str = "auto") -> tuple[str, float]:
    """(name, peak FLOP/s of one device); `auto` reads `jax.devices()[0].device_kind`."""
    name = accelerator.strip().lower()
    if name == "auto":
        device = jax.devices()[0]
        name = "cpu" if device.platform == "cpu" else device.device_kind
    if name == "cpu":
        # Virtual CPU devices share the host's cores: the host peak is split between them.
        return "cpu (measured)", measure_cpu_peak() / max(len(jax.devices("cpu")), 1)
    canon = accelerators.canonical_name(name)
    if canon is None:
        raise ValueError(f"train.accelerator={accelerator!r}: no peak FLOP/s known; use auto, cpu or one of "
                         f"{', '.join(accelerators.ACCELERATORS)}")
    return canon, accelerators.ACCELERATORS[canon].peak_flops


def flops_per_token(config: Any, n_frozen_matmul: int, n_lora: int, seq_len: int) -> float:
    """Training FLOPs per position (see the module docstring for the convention)."""
    attention = 12 * config.num_hidden_layers * seq_len * config.num_attention_heads * config.resolved_head_dim
    return 4 * n_frozen_matmul + 6 * n_lora + attention


def matmul_param_counts(model: Any) -> tuple[int, int]:
    """(frozen matmul weights, LoRA weights) of a LoRA-wrapped Llama (embedding table excluded)."""
    frozen = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)):
        names = [str(getattr(p, "key", p)) for p in path]
        if "kernel" in names:
            frozen += int(leaf.size)
    n_lora = sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, LoRAParam)))
    if model.config.tie_word_embeddings:
        frozen += model.config.vocab_size * model.config.hidden_size
    return frozen, n_lora


class MetricsLogger:
    """Writes every record to `<dir>/metrics.jsonl` and (optionally) TensorBoard, and draws the loss
    curve (`write_loss_curve`).

    A gs:// output_dir: the files are written in a local stand-in folder (`storage.LocalMirror`,
    whose metrics.jsonl is first copied down from the bucket) and uploaded by `sync`: at every
    checkpoint save (the training loop calls it, so the bucket holds the records of every saved
    step), every `SYNC_SECONDS` while logging, and at `close`."""

    SYNC_SECONDS = 60.0

    def __init__(self, output_dir: str, *, tensorboard: bool = True, enabled: bool = True,
                 resume_step: int | None = None):
        """resume_step: the checkpoint step a run resumes from; the records of later steps (logged
        before the restart, and about to be logged again) are dropped from metrics.jsonl first, and
        hidden from TensorBoard by a purge marker."""
        self.dir = output_dir
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        self._mirror = None
        self._synced = time.monotonic()
        if not enabled:
            return
        if is_remote(output_dir):
            self._mirror = LocalMirror(output_dir)
            self._mirror.pull((METRICS_FILE,))
            self.local_dir = self._mirror.local
        else:
            self.local_dir = pathlib.Path(output_dir)
        self.local_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            drop_records_after(self.local_dir / METRICS_FILE, resume_step)
        self._jsonl = open(self.local_dir / METRICS_FILE, "a")
        if tensorboard:
            from tensorboardX import SummaryWriter  # optional: only runs that write TensorBoard events

            # A resumed run's first event file starts with a purge marker at resume_step + 1, so
            # TensorBoard hides the steps the killed run logged after its checkpoint (logged again now).
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.local_dir / "tensorboard"), purge_step=purge)

    @property
    def jsonl_path(self) -> str:
        return f"{self.dir}/{METRICS_FILE}"

    def sync(self) -> None:
        """Flush the files, and upload the changed ones when the output_dir is a bucket."""
        if self._jsonl is not None:
            self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()
        if self._mirror is not None:
            self._mirror.push()
        self._synced = time.monotonic()

    def write_loss_curve(self, name: str = "loss_curve.png") -> str | None:
        """Draw `<dir>/<name>` from metrics.jsonl (after `close`); its path, or None when there is
        nothing to plot."""
        if not self.enabled or not (self.local_dir / METRICS_FILE).exists():
            return None
        png = plot_loss_curve(self.local_dir / METRICS_FILE, self.local_dir / name)
        if png is None:
            return None
        if self._mirror is not None:
            self._mirror.push()
        return f"{self.dir}/{name}" if self._mirror is not None else str(png)

    def log(self, step: int, values: dict[str, float], split: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{split}/{k}", float(v), int(step))
        if self._mirror is not None and time.monotonic() - self._synced > self.SYNC_SECONDS:
            self.sync()

    def close(self) -> None:
        """Close the files (uploading them for a gs:// output_dir); `write_loss_curve` still works."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._mirror is not None:
            self._mirror.push()


def drop_records_after(path: pathlib.Path, step: int) -> int:
    """Rewrite a metrics.jsonl without records of steps after `step` (and without a line cut short
    by a kill, `journal.read_jsonl_tail_safe`); returns how many lines were dropped. The file is
    replaced atomically."""
    if not path.is_file():
        return 0
    rows, torn = read_jsonl_tail_safe(path)
    kept = [rec for _, rec in rows if _step_of(rec) is not None and _step_of(rec) <= step]
    if len(kept) < len(rows):
        write_text_atomic(path, "".join(json.dumps(rec) + "\n" for rec in kept))
    return torn + len(rows) - len(kept)


def _step_of(record: Any) -> int | None:
    try:
        return int(record["step"])
    except (KeyError, TypeError, ValueError):
        return None


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a restarted run appends, so later records of a step win."""
    by_key: dict[tuple[str, int], dict[str, Any]] = {}
    for line in pathlib.Path(path).read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            by_key[(rec["split"], rec["step"])] = rec
    return sorted(by_key.values(), key=lambda r: (r["split"], r["step"]))


def plot_loss_curve(metrics_path: str | pathlib.Path, png_path: str | pathlib.Path) -> pathlib.Path | None:
    """Train (and validation) loss against step, as a PNG; None when there is nothing to plot."""
    import matplotlib  # costly (about a second): only when a curve is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r["split"] == "train" and "loss" in r]
    val = [(r["step"], r["loss"]) for r in records if r["split"] == "val" and "loss" in r]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train")
    if val:
        ax.plot(*zip(*val), marker="o", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("token cross-entropy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png_path = pathlib.Path(png_path)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


__all__ = ["matmul_flops", "measure_cpu_peak", "peak_flops_per_device", "flops_per_token", "matmul_param_counts",
           "MetricsLogger", "drop_records_after", "read_metrics", "plot_loss_curve"]
