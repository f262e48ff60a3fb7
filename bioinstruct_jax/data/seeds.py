"""The hand-written seed tasks (`seeds/bioinstruct_seeds.jsonl`): load and validate.

Every seed needs a unique id, a non-empty instruction and output, and a category among
qa/ie/gen/other; an error names the file and line.
"""

from __future__ import annotations

import collections
import pathlib

from bioinstruct_jax.config import bundled
from bioinstruct_jax.data.records import CATEGORIES, InstructionRecord, RecordError, read_jsonl_records

DEFAULT_SEEDS_PATH = bundled.root() / "seeds" / "bioinstruct_seeds.jsonl"  # package data (config.bundled)


def load_seeds(path: str | pathlib.Path = DEFAULT_SEEDS_PATH) -> list[InstructionRecord]:
    """The seed tasks, validated; raises RecordError naming file and line."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"seed file {path} does not exist")
    seeds: list[InstructionRecord] = []
    seen: dict[str, int] = {}
    lineno = 0
    lines = [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    for lineno, rec in zip(lines, read_jsonl_records(path)):
        where = f"{path}:{lineno}"
        if not rec.id:
            raise RecordError(f"{where}: seed has no 'id'")
        if rec.id in seen:
            raise RecordError(f"{where}: id {rec.id!r} already used on line {seen[rec.id]}")
        seen[rec.id] = lineno
        for key in ("instruction", "output"):
            if not getattr(rec, key).strip():
                raise RecordError(f"{where}: seed {rec.id} has an empty {key!r}")
        if rec.category not in CATEGORIES:
            raise RecordError(f"{where}: seed {rec.id} category {rec.category!r} is not one of {CATEGORIES}")
        seeds.append(rec)
    if not seeds:
        raise RecordError(f"{path}: no seed tasks")
    return seeds


def category_counts(records: list[InstructionRecord]) -> dict[str, int]:
    counts = collections.Counter(r.category for r in records)
    return {c: counts.get(c, 0) for c in CATEGORIES}
