"""Parsing a generation reply into tasks, item by item: a malformed item is counted and skipped,
never guessed at."""

from __future__ import annotations

import dataclasses
import re

from bioinstruct_jax.data.records import CATEGORIES, InstructionRecord

_DECOR = r"[ \t>#*_`]*"
_ITEM_RE = re.compile(rf"^{_DECOR}(\d+)\s*[.)]{_DECOR}Instruction{_DECOR}:", re.M | re.I)
_FIELD_RE = re.compile(rf"^{_DECOR}(\d+)\s*[.)]{_DECOR}(Input|Output|Category){_DECOR}:", re.M | re.I)
_NO_INPUT_RE = re.compile(r"^\s*(<\s*no\s*input\s*>|no\s*input\.?|none\.?|n/?a\.?)\s*$", re.I)
_TRAILING_SEP_RE = re.compile(r"(\s*(#{2,}|-{3,}|\*{3,})\s*)+$")


@dataclasses.dataclass
class ParsedReply:
    tasks: list[InstructionRecord]
    malformed: int


def _clean(text: str) -> str:
    return _TRAILING_SEP_RE.sub("", text).strip().strip("*_`").strip()


def parse_generation_reply(text: str, first_number: int = 4, truncated: bool = False) -> ParsedReply:
    """Tasks from a reply that continues the numbered list at `first_number`. An item without
    instruction, input or output, or with mismatched numbers, is counted as malformed; with
    `truncated` (finish_reason "length") the last item is dropped as malformed too."""
    if not _ITEM_RE.match(text.lstrip("\n")):
        text = f"{first_number}. Instruction: {text.lstrip()}"
    starts = list(_ITEM_RE.finditer(text))
    tasks: list[InstructionRecord] = []
    malformed = 0
    for j, m in enumerate(starts):
        end = starts[j + 1].start() if j + 1 < len(starts) else len(text)
        number = m.group(1)
        body = text[m.end() : end]
        fields = list(_FIELD_RE.finditer(body))
        names = [f.group(2).lower() for f in fields]
        if truncated and j == len(starts) - 1:
            malformed += 1
            continue
        if (
            "input" not in names
            or "output" not in names
            or names.index("input") > names.index("output")
            or any(f.group(1) != number for f in fields)
        ):
            malformed += 1
            continue
        parts: dict[str, str] = {}
        for k, f in enumerate(fields):
            stop = fields[k + 1].start() if k + 1 < len(fields) else len(body)
            parts.setdefault(f.group(2).lower(), _clean(body[f.end() : stop]))
        instruction = _clean(body[: fields[0].start()])
        output = parts["output"]
        if not instruction or not output:
            malformed += 1
            continue
        inp = parts["input"]
        if _NO_INPUT_RE.match(inp):
            inp = ""
        category = parts.get("category", "").lower()
        tasks.append(InstructionRecord(instruction=instruction, input=inp, output=output,
                                       category=category if category in CATEGORIES else ""))
    return ParsedReply(tasks, malformed)
