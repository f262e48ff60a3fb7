"""The instruction record shared by seeds, generation and training data, and its file readers.

A record is an (instruction, input, output) triple with a category (qa, ie, gen, other, or empty
when unlabelled) and an id; `instruction` and `output` are required. Training files may also hold
conversations, beside such records: OpenAI chat records `{"messages": [{"role": "system" |
"user" | "assistant", "content": ...}, ...]}` and ShareGPT records `{"conversations": [{"from":
"system" | "human" | "gpt", "value": ...}, ...]}`, both read into `messages` (roles system / user /
assistant; a system turn only first; at least one user and one assistant turn). `read_jsonl_records` (JSON
lines) and `read_instruction_file` (a JSON array or JSON lines) report a bad record, bad JSON or
bytes that are not UTF-8 as `file:line: reason`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

from bioinstruct_jax.config.storage import as_path

CATEGORIES = ("qa", "ie", "gen", "other")
FIELDS = ("id", "instruction", "input", "output", "category")
CHAT_ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class RecordError(ValueError):
    """A record that cannot be read; the message names file and line."""


def decode_utf8(data: bytes, path: str | pathlib.Path) -> str:
    """`data` decoded as UTF-8 (a leading BOM dropped); bytes that are not UTF-8 raise RecordError
    naming the file, line and column."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RecordError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {col}); "
                          "save the file as UTF-8") from None


def read_utf8(path: str | pathlib.Path) -> str:
    """The text of a UTF-8 file; see `decode_utf8`."""
    return decode_utf8(as_path(path).read_bytes(), path)  # local or gs://


@dataclasses.dataclass
class InstructionRecord:
    instruction: str
    input: str = ""
    output: str = ""
    category: str = ""
    id: str = ""
    messages: list[dict[str, str]] | None = None  # a conversation (chat records); None for an instruction

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in FIELDS}
        if self.messages is not None:
            out["messages"] = [dict(m) for m in self.messages]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, obj: Any, where: str = "<record>") -> "InstructionRecord":
        """Build from a JSON object; `where` (e.g. "file:12") prefixes every error."""
        if not isinstance(obj, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if "messages" in obj or "conversations" in obj:
            return cls.from_chat(obj, where)
        for key in ("instruction", "output"):
            if obj.get(key) is None:
                raise RecordError(f"{where}: missing key {key!r} (keys: {sorted(obj)})")
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

    @classmethod
    def from_chat(cls, obj: dict[str, Any], where: str = "<record>") -> "InstructionRecord":
        """A conversation record (OpenAI `messages` or ShareGPT `conversations`, see the module
        docstring); `instruction` / `output` hold its first user and last assistant turn."""
        key = "messages" if "messages" in obj else "conversations"
        turns = obj[key]
        if not isinstance(turns, list) or not turns:
            raise RecordError(f"{where}: {key!r} must be a non-empty list of turns, got {type(turns).__name__}")
        messages = []
        for i, turn in enumerate(turns):
            at = f"{where}: {key}[{i}]"
            if not isinstance(turn, dict):
                raise RecordError(f"{at}: expected an object, got {type(turn).__name__}")
            if key == "messages":
                role, content = turn.get("role"), turn.get("content")
                if role not in CHAT_ROLES:
                    raise RecordError(f"{at}: role {role!r} is not one of {CHAT_ROLES}")
            else:
                who, content = turn.get("from"), turn.get("value")
                if who not in SHAREGPT_ROLES:
                    raise RecordError(f"{at}: 'from' {who!r} is not one of {tuple(SHAREGPT_ROLES)}")
                role = SHAREGPT_ROLES[who]
            if not isinstance(content, str):
                field = "content" if key == "messages" else "value"
                raise RecordError(f"{at}: {field!r} must be a string, got {type(content).__name__}")
            if role == "system" and i:
                raise RecordError(f"{at}: a system turn may only come first")
            messages.append({"role": role, "content": content})
        roles = [m["role"] for m in messages]
        for need in ("user", "assistant"):
            if need not in roles:
                raise RecordError(f"{where}: the conversation has no {need} turn (roles: {roles})")
        category = obj.get("category") or ""
        if category and category not in CATEGORIES:
            raise RecordError(f"{where}: category {category!r} is not one of {CATEGORIES}")
        first_user = next(m["content"] for m in messages if m["role"] == "user")
        last_reply = next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
        return cls(instruction=first_user, output=last_reply, category=category, id=str(obj.get("id") or ""),
                   messages=messages)


def read_jsonl_records(path: str | pathlib.Path, skip_malformed: bool = False) -> list[InstructionRecord]:
    """All records of a JSONL file (blank lines ignored). A malformed line raises RecordError
    naming file and line, or is skipped when skip_malformed is set."""
    return _jsonl_records(as_path(path), read_utf8(path), skip_malformed)


def _jsonl_records(path: pathlib.Path, text: str, skip_malformed: bool) -> list[InstructionRecord]:
    records: list[InstructionRecord] = []
    for lineno, line in enumerate(text.split("\n"), 1):
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


def read_instruction_file(path: str | pathlib.Path, *, skip_malformed: bool = False
                          ) -> tuple[list[InstructionRecord], int]:
    """(records, number skipped) of a JSON array or JSON lines file (local or gs://); errors name
    file and line."""
    path = as_path(path)
    text = read_utf8(path)
    if text.lstrip()[:1] != "[":
        records = _jsonl_records(path, text, skip_malformed)
        n_lines = sum(1 for line in text.splitlines() if line.strip())
        return records, n_lines - len(records)
    records, skipped = [], 0
    for index, line, obj in _iter_json_array(text, path):
        try:
            records.append(InstructionRecord.from_dict(obj, f"{path}:{line} (record {index})"))
        except RecordError:
            if not skip_malformed:
                raise
            skipped += 1
    return records, skipped


def _iter_json_array(text: str, path: pathlib.Path) -> Iterator[tuple[int, int, Any]]:
    """(index, line, value) of each element of a top-level JSON array, parsed one at a time."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(text, 0).end() + 1  # past "["
    index = 0

    def fail(msg: str, at: int) -> RecordError:
        line = text.count("\n", 0, at) + 1
        col = at - (text.rfind("\n", 0, at) + 1) + 1
        return RecordError(f"{path}:{line}: {msg} (record {index}, column {col})")

    pos = ws.match(text, pos).end()
    if text.startswith("]", pos):
        return
    while True:
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise fail(f"not valid JSON ({exc.msg})", exc.pos) from None
        yield index, text.count("\n", 0, pos) + 1, obj
        index += 1
        pos = ws.match(text, end).end()
        if text.startswith(",", pos):
            pos = ws.match(text, pos + 1).end()
        elif text.startswith("]", pos):
            rest = text[pos + 1:].strip()
            if rest:
                raise fail("text after the closing ]", pos + 1)
            return
        else:
            raise fail("expected , or ] between records", pos)


def write_jsonl_records(path: str | pathlib.Path, records: list[InstructionRecord]) -> None:
    """Write records, one JSON object per line."""
    with pathlib.Path(path).open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(rec.to_json() + "\n")


def label_keys(obj: Any, where: str) -> tuple[str, list[str]]:
    """(category, keys) of one labels-file row {"id" and/or "instruction", "category"}: the keys
    are "id:<id>" and "ins:<instruction>", the ways a record is matched to its label. `where`
    (FILE:LINE) starts every error."""
    cat = obj.get("category") if isinstance(obj, dict) else None
    if cat not in CATEGORIES:
        raise RecordError(f"{where}: category {cat!r} is not one of {CATEGORIES}")
    keys = [f"id:{obj['id']}"] if obj.get("id") else []
    if obj.get("instruction"):
        keys.append(f"ins:{obj['instruction'].strip()}")
    if not keys:
        raise RecordError(f"{where}: a label needs an 'id' or an 'instruction'")
    return cat, keys
