"""Exports are whole or absent: the staging-folder name every export writes into, and what readers check.

An export (merged, PEFT, GGUF) is written into `.NAME.tmp-PID` beside its output folder NAME and
renamed to NAME only when every file is written (`checkpoint.output.StagedDir`). So an output folder
that exists is a whole export, and a `.NAME.tmp-PID` folder is an unfinished one: its process was
killed (or is still writing). `refuse_unfinished(path)` is the loaders' check (HF folders, GGUF
files, PEFT adapters): a path inside such a folder is a one-line error.
`stale_staging(out_dir)` lists the staging folders left beside an output folder, with whether their
process is still running, for the rerun's clean-up or refusal.

`BIOINSTRUCT_TEST_EXPORT_KILL_AFTER_SHARD=N` (tests only) makes an export SIGKILL itself after its
N-th safetensors shard (GGUF: its N-th tensor) is written (`kill_point`).
"""

from __future__ import annotations

import os
import pathlib
import re
import signal

from bioinstruct_jax.checkpoint.errors import CheckpointError

_STAGING = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>\d+)")
KILL_AFTER_SHARD_ENV = "BIOINSTRUCT_TEST_EXPORT_KILL_AFTER_SHARD"


def staging_dir(out_dir: pathlib.Path, pid: int | None = None) -> pathlib.Path:
    """The staging folder of `out_dir` for process `pid` (default: this one)."""
    return out_dir.parent / f".{out_dir.name}.tmp-{os.getpid() if pid is None else pid}"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def stale_staging(out_dir: pathlib.Path) -> list[tuple[pathlib.Path, int, bool]]:
    """(staging folder, pid, still running) for each staging folder of `out_dir` other than ours."""
    found = []
    if out_dir.parent.is_dir():
        for p in sorted(out_dir.parent.glob(f".{out_dir.name}.tmp-*")):
            m = _STAGING.fullmatch(p.name)
            if m and m.group("name") == out_dir.name and int(m.group("pid")) != os.getpid():
                found.append((p, int(m.group("pid")), _running(int(m.group("pid")))))
    return found


def refuse_unfinished(path: str | pathlib.Path) -> None:
    """A CheckpointError when `path` is (or lies in) an unfinished export's staging folder."""
    p = pathlib.Path(path)
    for part in (p, *p.parents):
        m = _STAGING.fullmatch(part.name)
        if m:
            raise CheckpointError(f"{path}: {part.name} is an unfinished export of {m.group('name')} "
                                  f"(process {m.group('pid')} was writing it; a whole export is renamed to "
                                  f"{m.group('name')} when complete); rerun the export")


def kill_point(count: int) -> None:
    """Tests only: SIGKILL this process once `count` shards are written, when the variable asks."""
    value = os.environ.get(KILL_AFTER_SHARD_ENV)
    if value and count == int(value):
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["KILL_AFTER_SHARD_ENV", "kill_point", "refuse_unfinished", "stale_staging", "staging_dir"]
