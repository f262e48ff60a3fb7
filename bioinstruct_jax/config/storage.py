"""Paths that are local or on Cloud Storage (`gs://bucket/...`): one path type for both.

`as_path(value)` is the one way a path the user gives (a run's output_dir, a checkpoint, a model
folder, a data file, an eval output) becomes a path object: an `etils.epath.Path`, which is a
`pathlib.Path` for a local path and a `gs://` URL path (read and written through gcsfs) otherwise.
It is the path type Orbax uses too, so a run's checkpoints and its other files go the same way.
`is_remote` tells the two apart; `local_path` is for an operation that only works on a local disk
(it refuses a URL in one line naming the operation).

Files written bit by bit (metrics.jsonl appended every step, TensorBoard event files, an eval's
predictions journal) cannot be appended to in a bucket: a bucket object is written whole. They are
written in a local folder that stands in for the bucket folder, `LocalMirror`, whose `pull` copies
the bucket's files down first (a resumed run continues them) and whose `push` uploads every file
that changed since the last push; `staged_folder(path)` is that mirror as a context manager (a
local path is used as it is).

Missing dependencies: a `gs://` path without gcsfs installed is a `MissingExtraError` naming the
extra to install (`pip install 'bioinstruct-jax[gcs]'`), raised before anything is read.

Emulators and warnings: with `STORAGE_EMULATOR_HOST` set (a local GCS emulator), gcsfs's
zonal-bucket probe, a gRPC call that no emulator serves, is turned off
(`GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false` unless set); gcsfs's warnings are shown once each,
not once per file. This module imports nothing else of the project.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pathlib
import tempfile
from typing import Iterator

from etils import epath

GCS_EXTRA = "gcs"
_GCSFS_ZONAL_PROBE_ENV = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"
_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


class MissingExtraError(ValueError):
    """A gs:// path on an install without the `gcs` extra."""


class LocalOnlyError(ValueError):
    """A gs:// path given to an operation that only works on a local disk."""


class _OncePerMessage(logging.Filter):
    """Lets each distinct warning through once (gcsfs repeats its credential / bucket-type notes
    for every file it opens)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            return True
        message = record.getMessage()
        if message in self._seen:
            return False
        self._seen.add(message)
        return True


def _configure_gcsfs() -> None:
    if os.environ.get(_EMULATOR_ENV):
        os.environ.setdefault(_GCSFS_ZONAL_PROBE_ENV, "false")
    for name in ("gcsfs", "gcsfs.extended_gcsfs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OncePerMessage) for f in logger.filters):
            logger.addFilter(_OncePerMessage())


_configure_gcsfs()


def is_remote(value: str | os.PathLike) -> bool:
    """Whether `value` names a location in a bucket (`gs://...`) rather than a local file."""
    return "://" in str(value)


def require_remote_support(value: str | os.PathLike) -> None:
    """Raise `MissingExtraError` for a gs:// path when gcsfs (the `gcs` extra) is not installed."""
    if not str(value).startswith("gs://") or _gcsfs_importable():
        return
    raise MissingExtraError(f"{value}: gs:// paths need gcsfs, which is not installed; "
                            f"install it with: pip install 'bioinstruct-jax[{GCS_EXTRA}]'")


def _gcsfs_importable() -> bool:
    try:
        importlib.import_module("gcsfs")  # optional dependency (the gcs / tpu extras)
    except ImportError:
        return False
    return True


def as_path(value: str | os.PathLike) -> epath.Path:
    """A local path or a `gs://` URL as an `epath.Path` (the `//` of the URL kept)."""
    if isinstance(value, epath.Path) and not is_remote(value):
        return value
    require_remote_support(value)
    return epath.Path(value)


def local_path(value: str | os.PathLike, operation: str) -> pathlib.Path:
    """`value` as a local `pathlib.Path`; a gs:// URL is a `LocalOnlyError` naming `operation`."""
    if is_remote(value):
        raise LocalOnlyError(f"{value}: {operation} needs a local path, not a bucket")
    return pathlib.Path(value)


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base/part/...` as a string, local or gs:// alike (for messages and JSON summaries)."""
    return str(as_path(base).joinpath(*parts))


class LocalMirror:
    """A local folder standing in for the bucket folder `remote` (see the module docstring)."""

    def __init__(self, remote: str | os.PathLike):
        self.remote = as_path(remote)
        self._tmp = tempfile.TemporaryDirectory(prefix="bioinstruct-mirror-")
        self.local = pathlib.Path(self._tmp.name)
        self._pushed: dict[str, tuple[int, int]] = {}

    def pull(self, names: tuple[str, ...] | None = None) -> None:
        """Copy the bucket folder's files (only `names`, when given) into the local folder."""
        if names is None:
            names = tuple(_relative(f"{root}/{name}", str(self.remote))  # fsspec's walk drops "gs://"
                          for root, _dirs, files in self.remote.walk() for name in files)
        for rel in names:
            source = self.remote / rel
            if not source.is_file():
                continue
            target = self.local / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            self._pushed[rel] = _signature(target)

    def push(self) -> None:
        """Upload every local file that is new or changed since the last pull / push."""
        for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
            rel = path.relative_to(self.local).as_posix()
            signature = _signature(path)
            if self._pushed.get(rel) == signature:
                continue
            target = self.remote / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())  # a bucket object appears whole, never half written
            self._pushed[rel] = signature

    def close(self) -> None:
        self._tmp.cleanup()


def _signature(path: pathlib.Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _relative(path: str, root: str) -> str:
    path, root = path.removeprefix("gs://"), root.removeprefix("gs://").rstrip("/")
    return path[len(root) + 1:]


@contextlib.contextmanager
def staged_folder(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A local folder to write `path`'s files in: `path` itself when local; for a gs:// folder a
    `LocalMirror` holding the bucket's files, pushed back when the block ends (on an error too,
    so that work done is kept)."""
    if not is_remote(path):
        yield pathlib.Path(path)
        return
    mirror = LocalMirror(path)
    try:
        mirror.pull()
        yield mirror.local
    finally:
        try:
            mirror.push()
        finally:
            mirror.close()


__all__ = ["LocalMirror", "staged_folder", "MissingExtraError", "LocalOnlyError", "GCS_EXTRA", "is_remote",
           "require_remote_support", "as_path", "local_path", "join"]
