"""Files named by a checkpoint's index or manifest must stay inside the checkpoint folder.

`inside(folder, name, what)` resolves a file name read from an index (`weight_map` of
`model.safetensors.index.json`, PEFT adapter files, Orbax step items) against `folder` and refuses,
before anything is opened, a name that is absolute, has a `..` part, or resolves (through
symlinks) to a place outside the folder. `check_tree(folder)` applies the same rule to every
symlink under a folder (an Orbax run given by path).

One layout is allowed to link outward: a Hugging Face hub cache snapshot
(`<repo>/snapshots/<revision>/<file>` -> `<repo>/blobs/<hash>`), which is how every model
downloaded by `huggingface_hub` is stored; its links may resolve into that repository's `blobs/`.
"""

from __future__ import annotations

import os
import pathlib


class UnsafePathError(ValueError):
    """A file name in a checkpoint's index or manifest that points outside the checkpoint folder."""


def _allowed_roots(folder: pathlib.Path) -> list[pathlib.Path]:
    real = folder.resolve()
    roots = [real]
    if folder.parent.name == "snapshots" and (folder.parent.parent / "blobs").is_dir():
        roots.append((folder.parent.parent / "blobs").resolve())
    return roots


def inside(folder: str | os.PathLike, name: str, what: str) -> pathlib.Path:
    """`folder / name`, after checking that it cannot lead outside `folder`.

    what: where the name was read, for the error (e.g. "model.safetensors.index.json weight_map").
    """
    folder = pathlib.Path(folder)
    rel = pathlib.PurePath(str(name))
    if rel.is_absolute():
        raise UnsafePathError(f"{folder}: {what} names {name!r}, an absolute path; only files inside "
                              f"the checkpoint folder are read")
    if ".." in rel.parts:
        raise UnsafePathError(f"{folder}: {what} names {name!r}, which leaves the checkpoint folder "
                              f"('..'); only files inside it are read")
    path = folder / rel
    resolved = path.resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in _allowed_roots(folder)):
        raise UnsafePathError(f"{folder}: {what} names {name!r}, a symlink to {resolved}, outside the "
                              f"checkpoint folder; only files inside it are read")
    return path


def check_tree(folder: str | os.PathLike, what: str = "checkpoint") -> None:
    """Refuse a folder holding any symlink that resolves outside it (files and folders alike)."""
    folder = pathlib.Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(folder):  # does not follow symlinked folders
        for name in dirnames + filenames:
            path = pathlib.Path(dirpath) / name
            if path.is_symlink():
                inside(folder, str(path.relative_to(folder)), what)
