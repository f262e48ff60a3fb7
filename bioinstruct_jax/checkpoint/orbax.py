"""Training checkpoints with Orbax's `CheckpointManager`: save, keep, resume, read back.

One checkpoint per saved step under `<output_dir>/checkpoints/<step>/`, with five items:
  lora   the LoRA weights (`nnx.State` of `LoRAParam`s, f32)        StandardSave
  opt    the optimizer state (AdamW moments + counters)              StandardSave
  rng    the LoRA-dropout RNG state (keys stored as raw key data)    StandardSave
  data   each process's data-iterator state, `process_<i>-of-<n>.json` (the hosts' states differ;
         the file names are grain's own Orbax handler's)             ProcessLocalJsonSave
  meta   JSON (written by the primary process): step, the resolved run config, the model signature
Checkpoints written before the `data` item kept the (single) data state in `meta`; they resume.

Several processes: every process calls `save` / `restore` (Orbax's multi-process protocol, with
barriers); each writes the shards of the arrays it holds, process 0 writes `meta` and finalises
the step directory. A checkpoint written by N processes restores its arrays on any number of
processes (export on one host), but its data states only on N.
Frozen base weights are not stored: they come back from `model.hf_path`, or from `model.seed` for
presets with random weights (created by the same jitted initialiser, so bit-identical).

Saves are asynchronous (the step loop continues while arrays are written); Orbax writes to a
temporary directory and renames it to `<step>` only when complete, so a step directory that
exists is a finished checkpoint. Kept: the newest `keep_last` plus the `keep_best` with the lowest
validation loss (Orbax preservation policies). Paths may be local or `gs://...` (Orbax's epath).

`check_compatible` compares a checkpoint's model signature (architecture, dtypes, LoRA shape) with
the current run before anything is compiled, so a directory from a different model fails fast.
`is_run` / `run_root` / `checkpoint_dir` are the one place that tells a training run (its
output_dir or its `checkpoints/` folder) from other paths. Rebuilding base + LoRA from a checkpoint
alone is `checkpoint.restore.restore_run`.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from bioinstruct_jax.checkpoint.paths import check_tree
from bioinstruct_jax.config.storage import as_path, is_remote

CHECKPOINT_SUBDIR = "checkpoints"


class _ReadOnlyNotice(logging.Filter):
    """Drops Orbax's absl warnings about read-only mode ("Given directory is read only=...",
    "CheckpointManagerOptions.read_only=True, setting ..."): restoring for eval / export / generate
    opens the run read-only on purpose, and the lines read like errors to users."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("Given directory is read only")
                    or msg.startswith("CheckpointManagerOptions.read_only=True"))


logging.getLogger("absl").addFilter(_ReadOnlyNotice())


class CheckpointMismatchError(ValueError):
    """A checkpoint directory that belongs to a different model / LoRA layout than this run."""


def checkpoint_dir(output_dir: str | os.PathLike) -> epath.Path:
    """`<output_dir>/checkpoints`, or `output_dir` itself when it already is a checkpoint folder.
    A relative local path is made absolute (Orbax refuses to save under a relative one)."""
    path = as_path(output_dir if is_remote(output_dir) else os.path.abspath(output_dir))
    if path.name == CHECKPOINT_SUBDIR or (path.exists() and _has_steps(path) and not (path / CHECKPOINT_SUBDIR).exists()):
        return path
    return path / CHECKPOINT_SUBDIR


def _has_steps(path: epath.Path) -> bool:
    return any(p.name.isdigit() for p in path.iterdir()) if path.is_dir() else False


def is_run(path: str | os.PathLike) -> bool:
    """Whether `path` (local or gs://) is a training run: an output_dir holding `checkpoints/`, or a
    checkpoints folder itself (numbered step folders)."""
    path = as_path(path)
    if (path / CHECKPOINT_SUBDIR).is_dir():
        return True
    return path.is_dir() and any(p.name.isdigit() and p.is_dir() for p in path.iterdir())


def run_root(path: str | os.PathLike) -> epath.Path:
    """A training run's output_dir, from the run folder or its `checkpoints/` folder."""
    path = as_path(path)
    return path.parent if path.name == CHECKPOINT_SUBDIR else path


def keys_to_data(tree: Any) -> Any:
    """Typed PRNG keys -> their uint32 key data (Orbax stores plain arrays)."""
    def one(x):
        return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    return jax.tree.map(one, tree)


def data_to_keys(tree: Any, template: Any) -> Any:
    """Inverse of `keys_to_data`, taking the key implementation from `template`."""
    def one(x, t):
        if jnp.issubdtype(t.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(x, impl=jax.random.key_impl(t))
        return x
    return jax.tree.map(one, tree, template)


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a tree of arrays, the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


class ProcessLocalJsonHandler(ocp.CheckpointHandler):
    """A JSON object per process: `process_<index>-of-<count>.json` in the item directory."""

    @staticmethod
    def _file(directory: epath.Path) -> epath.Path:
        return epath.Path(directory) / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    def save(self, directory: epath.Path, args: "ProcessLocalJsonSave") -> None:
        self._file(directory).write_text(json.dumps(_jsonable(args.item)))

    def restore(self, directory: epath.Path, args: "ProcessLocalJsonRestore | None" = None) -> Any:
        path = self._file(directory)
        if not path.exists():
            found = sorted(p.name for p in epath.Path(directory).iterdir())
            raise CheckpointMismatchError(
                f"{directory}: no data-iterator state for process {jax.process_index()} of {jax.process_count()} "
                f"(found {found}); resume with as many processes as wrote the checkpoint")
        return json.loads(path.read_text())

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(ProcessLocalJsonHandler, for_save=True)
@dataclasses.dataclass
class ProcessLocalJsonSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(ProcessLocalJsonHandler, for_restore=True)
@dataclasses.dataclass
class ProcessLocalJsonRestore(ocp.args.CheckpointArgs):
    pass


class RunCheckpointer:
    """Thin wrapper over `ocp.CheckpointManager` for one training run's directory."""

    def __init__(self, output_dir: str, *, keep_last: int = 2, keep_best: int = 1,
                 async_save: bool = True, read_only: bool = False):
        self.directory = checkpoint_dir(output_dir)
        if not is_remote(self.directory):
            check_tree(self.directory, "training checkpoint folder")  # before Orbax reads anything
        keep: list[Any] = [policies.LatestN(n=keep_last)]
        if keep_best:
            keep.append(policies.BestN(get_metric_fn=lambda m: -float(m["val_loss"]), n=keep_best,
                                       keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(policies=keep),
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    # -- queries ---------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """The JSON item of a step (latest by default): step, data_state, config, model_signature."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint")
        if step not in self.all_steps():
            raise FileNotFoundError(f"{self.directory}: no checkpoint for step {step} (have {self.all_steps()})")
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    # -- save / restore --------------------------------------------------------------------
    def save(self, step: int, *, lora: Any, opt_state: Any, rng: Any, meta: dict[str, Any],
             val_loss: float | None = None, data_state: Any = None) -> bool:
        """Start an (async) save of `step`; `val_loss` makes it a candidate for keep_best.

        data_state: this process's data-iterator state (every process passes its own)."""
        meta = dict(meta, step=int(step))
        self._check_free_space(step, (lora, opt_state, rng))
        items = dict(lora=ocp.args.StandardSave(lora), opt=ocp.args.StandardSave(opt_state),
                     meta=ocp.args.JsonSave(_jsonable(meta)))
        if data_state is not None:
            items["data"] = ProcessLocalJsonSave(data_state)
        if jax.tree.leaves(rng):  # no RNG state at all when LoRA dropout is 0
            items["rng"] = ocp.args.StandardSave(keys_to_data(rng))
        args = ocp.args.Composite(**items)
        metrics = {"val_loss": float(val_loss)} if val_loss is not None else None
        return self.manager.save(int(step), args=args, metrics=metrics, force=True)

    def _check_free_space(self, step: int, trees: Any) -> None:
        """Refuse to start a save that cannot fit on a local disk (a half-written save fails deep in
        Orbax's writer threads); the step's arrays plus 10% and 1 MiB of metadata must be free."""
        if is_remote(self.directory):
            return
        need = int(1.1 * sum(int(x.nbytes) for x in jax.tree.leaves(trees) if hasattr(x, "nbytes"))) + 2**20
        free = shutil.disk_usage(str(self.directory)).free
        if free < need:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                          f"{self.directory} (saving step {step} needs about {need / 2**20:.1f} MiB, "
                          f"{free / 2**20:.1f} MiB free; the checkpoints already there are intact)")

    def restore(self, step: int | None, *, lora: Any, opt_state: Any | None, rng: Any) -> dict[str, Any]:
        """Restore into the shapes/shardings of the given (live or abstract) trees.

        Returns {"lora", "opt" (None when opt_state is None), "rng", "meta"}.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        items = dict(lora=ocp.args.StandardRestore(abstract_like(lora)), meta=ocp.args.JsonRestore())
        if jax.tree.leaves(rng):
            items["rng"] = ocp.args.StandardRestore(abstract_like(keys_to_data(rng)))
        if opt_state is not None:
            items["opt"] = ocp.args.StandardRestore(abstract_like(opt_state))
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return {"lora": restored.lora, "opt": restored.opt if opt_state is not None else None,
                "rng": data_to_keys(restored.rng, rng) if "rng" in items else rng, "meta": restored.meta}

    def restore_data_state(self, step: int, meta: dict[str, Any] | None = None) -> Any:
        """This process's data-iterator state at `step` (from `meta` for checkpoints that predate
        the per-process item; None when the checkpoint has none)."""
        if (self.directory / str(step) / "data").is_dir():
            return from_jsonable(self.manager.restore(step, args=ocp.args.Composite(
                data=ProcessLocalJsonRestore())).data)
        meta = self.read_meta(step) if meta is None else meta
        return from_jsonable(meta["data_state"]) if "data_state" in meta else None

    def reached_preemption(self, step: int) -> bool:
        """Whether every process has reached the step at which a SIGTERM received by any of them
        is acted on (JAX's preemption sync point, through Orbax; all processes must ask, every step)."""
        return bool(self.manager.reached_preemption(int(step)))

    def wait(self) -> None:
        """Block until every pending async save is committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return {"__bytes__": value.decode("latin-1")}
    if hasattr(value, "item") and not isinstance(value, (str, int, float, bool)):
        return value.item()
    return value


def from_jsonable(value: Any) -> Any:
    """Inverse of the bytes encoding used for data-iterator states."""
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return value["__bytes__"].encode("latin-1")
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


def check_compatible(saved_signature: dict[str, Any], current_signature: dict[str, Any], where: str) -> None:
    """Raise `CheckpointMismatchError` naming every key where a checkpoint's model differs."""
    diffs = []
    for key in sorted(set(saved_signature) | set(current_signature)):
        a, b = saved_signature.get(key), current_signature.get(key)
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            diffs.append(f"{key}: checkpoint {a!r} vs this run {b!r}")
    if diffs:
        raise CheckpointMismatchError(
            f"{where} holds checkpoints of a different model, so this run cannot resume from it:\n  "
            + "\n  ".join(diffs)
            + "\nUse another train.output_dir, or delete that directory to start over."
        )


__all__ = [
    "CHECKPOINT_SUBDIR", "CheckpointMismatchError", "RunCheckpointer", "checkpoint_dir", "check_compatible",
    "is_run", "run_root", "keys_to_data", "data_to_keys", "abstract_like",
    "from_jsonable", "ProcessLocalJsonSave", "ProcessLocalJsonRestore",
]
