"""Crash-safe files for long-running writers (data generation, labelling).

- `append_lines`: append complete lines to a JSONL file and fsync, so a line is on disk before
  the caller counts it as written;
- `read_jsonl_tail_safe`: the objects of a JSONL file, where a last line cut short by a kill is
  dropped (and the file rewritten without it, atomically); a broken line anywhere else is an error
  naming file and line;
- `write_json_atomic`: write a JSON file through a temporary file, fsync and `os.replace`, so a
  reader sees the old or the new content, never half of it (every JSON file the package writes
  goes through it).

A kill (SIGKILL, Ctrl-C; a power loss too, as far as fsync is honoured) at any moment leaves
every file either as it was or with whole new lines, plus at most one torn last line that the
next reader drops.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Iterable

from bioinstruct_jax.data.records import RecordError, decode_utf8


def append_lines(path: pathlib.Path, lines: Iterable[str]) -> None:
    """Append each string as one line (no newline inside) and fsync before returning."""
    data = "".join(line + "\n" for line in lines)
    if not data:
        return
    with path.open("a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: pathlib.Path, obj: Any, *, indent: int = 2, sort_keys: bool = True) -> None:
    """Replace `path` with `obj` as indented UTF-8 JSON (NaN / Infinity allowed), atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def write_text_atomic(path: pathlib.Path, text: str) -> None:
    """Replace `path` with `text`, atomically (temporary file in the same folder, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)  # the rename itself survives a power loss
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl_tail_safe(path: pathlib.Path) -> tuple[list[tuple[int, Any]], int]:
    """([(line number, object)], torn lines dropped) of a JSONL file; missing file = ([], 0).

    Only an unterminated last line may be broken (a write cut by a kill): it is dropped and the file
    rewritten without it. A broken line elsewhere raises RecordError naming file and line."""
    if not path.exists():
        return [], 0
    raw = decode_utf8(path.read_bytes(), path)
    lines = raw.split("\n")
    terminated = raw.endswith("\n")
    if terminated:
        lines = lines[:-1]
    out: list[tuple[int, Any]] = []
    dropped = 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            if lineno == len(lines) and not terminated:
                dropped = 1
                continue
            raise RecordError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if raw and not terminated:  # drop the torn line, or end the last complete one
        kept = lines[:-1] if dropped else lines
        write_text_atomic(path, "".join(line + "\n" for line in kept))
    return out, dropped
