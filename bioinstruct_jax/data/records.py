"""The instruction record shared by seeds, generation and training data, and its JSONL reader.

A record is an (instruction, input, output) triple with a category (qa, ie, gen, other, or empty
when unlabelled) and an id. `read_jsonl_records` reports a bad line as `file:line: reason`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

CATEGORIES = ("qa", "ie", "gen", "other")
FIELDS = ("id", "instruction", "input", "output", "category")


class RecordError(ValueError):
    """A record that cannot be read; the message names file and line."""


@dataclasses.dataclass
class InstructionRecord:
    instruction: str
    input: str = ""
    output: str = ""
    category: str = ""
    id: str = ""

    def to_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in FIELDS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, obj: Any, where: str = "<record>") -> "InstructionRecord":
        """Build from a JSON object; `where` (e.g. "file:12") prefixes every error."""
        if not isinstance(obj, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if "instruction" not in obj:
            raise RecordError(f"{where}: missing key 'instruction' (keys: {sorted(obj)})")
        values: dict[str, str] = {}
        for key in FIELDS:
            value = obj.get(key, "")
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise RecordError(f"{where}: key {key!r} must be a string, got {type(value).__name__}")
            values[key] = value
        if values["category"] and values["category"] not in CATEGORIES:
            raise RecordError(f"{where}: category {values['category']!r} is not one of {CATEGORIES}")
        return cls(**values)


def read_jsonl_records(path: str | pathlib.Path, skip_malformed: bool = False) -> list[InstructionRecord]:
    """All records of a JSONL file (blank lines ignored). A malformed line raises RecordError
    naming file and line, or is skipped when skip_malformed is set."""
    path = pathlib.Path(path)
    records: list[InstructionRecord] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                if skip_malformed:
                    continue
                raise RecordError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            try:
                records.append(InstructionRecord.from_dict(obj, where))
            except RecordError:
                if skip_malformed:
                    continue
                raise
    return records


def write_jsonl_records(path: str | pathlib.Path, records: list[InstructionRecord]) -> None:
    """Write records, one JSON object per line."""
    with pathlib.Path(path).open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(rec.to_json() + "\n")
