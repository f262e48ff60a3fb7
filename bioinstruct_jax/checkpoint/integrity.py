"""Damaged training checkpoints: find them, name the step and file, fall back to an intact step.

Orbax marks a step complete by renaming its temporary folder (and writing `commit_success.txt`
on object stores), and lists only completed steps; it does not verify their contents, so a step
damaged afterwards (a truncated array chunk, a lost `_METADATA`, a cut `meta/metadata`) only fails
deep inside a restore. `verify_step` reads what a restore reads, on the host and without a model: the
step metadata, the JSON `meta` item, and for the `lora` / `opt` / `rng` array items their
`_METADATA` tree and every stored value of their OCDBT database, one at a time through TensorStore
(Orbax's storage layer). A failure is a
`DamagedCheckpointError` naming the step and, where the error lets us see it, the file.

`choose_step` picks the newest intact step (or checks an explicitly requested one); what it
skipped is returned so the caller can say so. `quarantine` renames a damaged step folder to
`<step>.damaged` (Orbax ignores names that are not step numbers), so a resumed run can save that
step number again and nothing is deleted. Local and gs:// runs alike (`config.storage` paths; on
a bucket the arrays are read through TensorStore's gcs driver).
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
from typing import Any

import jax
from etils import epath
from jax.experimental import multihost_utils

from bioinstruct_jax.checkpoint.paths import check_tree
from bioinstruct_jax.config.storage import as_path, is_remote

ARRAY_ITEMS = ("lora", "opt", "rng")
_PATH_IN_ERROR = re.compile(r"(?:file://)?(/[^\s\"'\]\[,]+)")


class DamagedCheckpointError(ValueError):
    """A checkpoint step whose files cannot be read back (names the step and file)."""

    def __init__(self, message: str, step: int | None = None, path: str | None = None):
        super().__init__(message)
        self.step = step
        self.path = path


def _damaged(step_dir: epath.Path, file: epath.Path | str, why: str) -> DamagedCheckpointError:
    step = int(step_dir.name) if step_dir.name.isdigit() else None
    return DamagedCheckpointError(f"checkpoint step {step} is damaged: {file}: {why}", step=step, path=str(file))


def _read_json(step_dir: epath.Path, path: epath.Path, required: bool = True) -> Any:
    if not path.is_file():
        if required:
            raise _damaged(step_dir, path, "missing")
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _damaged(step_dir, path, f"not valid JSON (truncated?): {err}") from None


def _file_in(message: str, item_dir: epath.Path) -> str | None:
    """The checkpoint file a TensorStore error names: a path in the message, or else the one data
    file whose size is the "value of size N" it reports (OCDBT reads name only the database)."""
    for match in _PATH_IN_ERROR.finditer(message):
        candidate = match.group(1).rstrip(".:;)")
        if candidate.startswith(str(item_dir)) and as_path(candidate).is_file():
            return candidate
    size = re.search(r"value of size (\d+)", message)
    if size:
        local = [] if is_remote(item_dir) else pathlib.Path(item_dir).rglob("*")  # no recursive glob on a bucket
        same = [p for p in local if p.is_file() and p.parent.name == "d" and p.stat().st_size == int(size.group(1))]
        if len(same) == 1:
            return str(same[0])
    return None


def _read_arrays(step_dir: epath.Path, item: str) -> None:
    """Read every stored value of an OCDBT array item, one at a time (all the bytes a restore reads)."""
    import tensorstore as ts  # Orbax's storage layer, installed with it

    item_dir = step_dir / item
    _read_json(step_dir, item_dir / "_METADATA")
    if not (item_dir / "manifest.ocdbt").is_file():
        raise _damaged(step_dir, item_dir / "manifest.ocdbt", "missing")
    key = None
    try:
        base = f"{item_dir}/" if is_remote(item_dir) else f"file://{item_dir}/"
        store = ts.KvStore.open({"driver": "ocdbt", "base": base}).result()
        for key in store.list().result():
            store.read(key).result()
    except ValueError as err:  # TensorStore's error type for unreadable data
        message = " ".join(str(err).split())
        file = _file_in(message, item_dir) or item_dir
        array = f" (array {key.decode(errors='replace')})" if key is not None else ""
        raise _damaged(step_dir, file, f"cannot be read back{array}: {message[:300]}") from None


def verify_step(step_dir: str | epath.Path, *, arrays: bool = True) -> None:
    """Raise `DamagedCheckpointError` when a step cannot be restored; `arrays=False` checks only
    the metadata files (cheap), not every array chunk."""
    step_dir = as_path(step_dir)
    if not step_dir.is_dir():
        raise _damaged(step_dir, step_dir, "missing")
    step_meta = _read_json(step_dir, step_dir / "_CHECKPOINT_METADATA", required=False)
    items = sorted((step_meta or {}).get("item_handlers") or {}) or \
        sorted(p.name for p in step_dir.iterdir() if p.is_dir())
    if "meta" not in items or "lora" not in items:
        missing = "meta" if "meta" not in items else "lora"
        raise _damaged(step_dir, step_dir / missing, "missing")
    meta = _read_json(step_dir, step_dir / "meta" / "metadata")
    if not isinstance(meta, dict) or "step" not in meta:
        raise _damaged(step_dir, step_dir / "meta" / "metadata", "holds no 'step' (not a training checkpoint meta)")
    for item in ARRAY_ITEMS:
        if item in items:
            if not (step_dir / item).is_dir():
                raise _damaged(step_dir, step_dir / item, "missing")
            if arrays:
                _read_arrays(step_dir, item)
            else:
                _read_json(step_dir, step_dir / item / "_METADATA")


def step_dirs(directory: str | epath.Path) -> dict[int, epath.Path]:
    """Step number -> folder of every step folder under a run's checkpoints/ folder."""
    directory = as_path(directory)
    if not directory.is_dir():
        return {}
    return {int(p.name): p for p in sorted(directory.iterdir(), key=lambda p: p.name) if p.name.isdigit()}


def choose_step(directory: str | epath.Path, requested: int | None = None
                ) -> tuple[int | None, list[DamagedCheckpointError]]:
    """(the step to restore, the damaged newer steps skipped on the way).

    requested: that step exactly (damaged or absent is an error); None: the newest intact step
    (None when there is no step at all, an error when every step is damaged)."""
    steps = step_dirs(directory)
    if requested is not None:
        if requested not in steps:
            raise FileNotFoundError(f"{directory}: no checkpoint for step {requested} (have {sorted(steps)})")
        verify_step(steps[requested])
        return requested, []
    skipped: list[DamagedCheckpointError] = []
    for step in sorted(steps, reverse=True):
        try:
            verify_step(steps[step])
            return step, skipped
        except DamagedCheckpointError as err:
            skipped.append(err)
    if skipped:
        raise DamagedCheckpointError(f"{directory}: every checkpoint step is damaged; the newest: {skipped[0]}",
                                     step=skipped[0].step, path=skipped[0].path)
    return None, []


def quarantine(step_dir: str | epath.Path) -> epath.Path:
    """Rename a step folder to `<step>.damaged[.N]` (kept for inspection, ignored by Orbax)."""
    step_dir = as_path(step_dir)
    target = step_dir.with_name(f"{step_dir.name}.damaged")
    n = 1
    while target.exists():
        target = step_dir.with_name(f"{step_dir.name}.damaged.{n}")
        n += 1
    step_dir.rename(target)
    return target


def pick_resume_step(checkpoints: str | epath.Path, requested: int | None = None) -> int | None:
    """The step a training run resumes from, after checking it (local runs; None: start afresh).

    Damaged newer steps are skipped and moved aside (`quarantine`), each named in a warning on
    stderr; with an explicit `requested` step, newer intact steps are moved aside too (the resumed
    run will write those step numbers again).
    """
    if not is_remote(checkpoints):
        check_tree(checkpoints, "training checkpoint folder")
    step, skipped = choose_step(checkpoints, requested)
    for err in skipped:
        print(f"warning: {err}", file=sys.stderr)
    if step is None:
        return None
    # Several processes share the run folder: each has chosen the step before process 0 alone moves
    # steps aside, and none goes on before that is done.
    several = jax.process_count() > 1
    if several:
        multihost_utils.sync_global_devices("bioinstruct_jax: resume step chosen")
    if jax.process_index() == 0:
        for newer, path in step_dirs(checkpoints).items():
            if newer > step:
                moved = quarantine(path)
                why = "damaged" if any(e.step == newer for e in skipped) else "newer than the requested step"
                print(f"warning: moved checkpoint step {newer} ({why}) aside to {moved}", file=sys.stderr)
    if several:
        multihost_utils.sync_global_devices("bioinstruct_jax: damaged steps moved aside")
    if skipped:
        print(f"warning: resuming from step {step}, the newest intact checkpoint", file=sys.stderr)
    return step


def pick_restore_step(checkpoints: str | epath.Path, requested: int | None = None) -> int | None:
    """The step a read-only command (export, generate, eval) restores: `requested`, checked, or the
    newest step when intact. A damaged newest step is an error naming it and the newest intact
    step to pass as --step (a read-only command never silently uses another step)."""
    step, skipped = choose_step(checkpoints, requested)
    if skipped:
        raise DamagedCheckpointError(f"{skipped[0]}; the newest intact step is {step}: pass --step {step} to use it",
                                     step=skipped[0].step, path=skipped[0].path)
    return step
