"""A generation run's state on disk: the progress file beside the output (the commit record of
the last absorbed request, with the tasks it accepted), the summary, the labels file, and the
recovery of an output a kill cut."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

from bioinstruct_jax.data.filters import REJECT_REASONS
from bioinstruct_jax.data.journal import append_lines, read_jsonl_tail_safe
from bioinstruct_jax.data.records import InstructionRecord, RecordError


class GenerationError(RuntimeError):
    """The run cannot go on (bad key, unknown model, no progress, files that disagree)."""


class GenerationInterrupted(Exception):
    """Ctrl-C: everything committed is on disk; `summary` says how far the run got."""

    def __init__(self, summary: dict[str, Any]):
        super().__init__("interrupted")
        self.summary = summary


def sidecar_paths(output: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(progress state, summary) paths next to the output file."""
    out = pathlib.Path(output)
    return out.with_suffix(".progress.json"), out.with_suffix(".summary.json")


def labels_path_for(output: str | pathlib.Path) -> pathlib.Path:
    """Where the labelling pass of a generation run keeps its labels."""
    return pathlib.Path(output).with_suffix(".labels.jsonl")


def fresh_state() -> dict[str, Any]:
    return {"version": 2, "next_request": 0, "requests": 0, "failed_requests": 0, "unused_replies": 0,
            "malformed_items": 0, "truncated_lines_dropped": 0, "rejected": {r: 0 for r in REJECT_REASONS},
            "prompt_tokens": 0, "completion_tokens": 0, "unproductive": 0, "written": 0, "pending": [],
            "label_requests": 0, "elapsed_s": 0.0}


def load_existing(path: pathlib.Path) -> tuple[list[InstructionRecord], int]:
    """Records already written, and how many torn lines were dropped. Only the last line may be
    broken (a kill mid-write); the file is then rewritten without it. Elsewhere a broken line is
    an error naming file and line."""
    rows, dropped = read_jsonl_tail_safe(path)
    records = []
    for lineno, obj in rows:
        try:
            records.append(InstructionRecord.from_dict(obj, f"{path}:{lineno}"))
        except RecordError as exc:
            raise RecordError(f"cannot resume: {exc}") from None
    return records, dropped


def id_number(rec_id: str) -> int:
    m = re.search(r"(\d+)$", rec_id or "")
    return int(m.group(1)) if m else 0


def load_state(state_path: pathlib.Path, out: pathlib.Path) -> dict[str, Any]:
    """The counters and commit record to resume from: the progress file's when both it and the
    output exist, else fresh ones with no commit record (`written` None: the output is trusted)."""
    state = fresh_state()
    state["written"] = None
    if state_path.exists() and out.exists():
        try:
            saved = json.loads(state_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise GenerationError(f"{state_path}: not valid JSON ({exc.msg}); delete it to resume from "
                                  f"{out} alone (its counters restart)") from None
        if "written" not in saved:  # a progress file without the commit record: trust the output
            saved.update(written=None, pending=[],
                         next_request=saved.get("requests", 0) + saved.get("failed_requests", 0))
        state.update(saved)
    return state


def recover_output(out: pathlib.Path, state: dict[str, Any], state_path: pathlib.Path) -> list[InstructionRecord]:
    """The output's records, completed from the progress file's last commit if a kill cut it
    (counts torn lines dropped into `state`)."""
    records, dropped = load_existing(out)
    state["truncated_lines_dropped"] += dropped
    written, pending = state.get("written"), state.get("pending") or []
    if written is None:
        return records
    before = written - len(pending)
    have = len(records)
    if not before <= have <= written:
        raise GenerationError(
            f"{out} holds {have} tasks but {state_path} records {written} after its last request; "
            f"the output was changed outside this program. Delete {state_path} to resume from the "
            "output alone (its counters restart)")
    missing = [InstructionRecord.from_dict(p, f"{state_path} (pending)") for p in pending[have - before:]]
    for lineno, (rec, p) in enumerate(zip(records[before:], pending), before + 1):
        if rec.instruction != p.get("instruction"):
            raise GenerationError(f"{out}: task {lineno} differs from the one {state_path} records "
                                  "there; the output was changed outside this program")
    if missing:
        append_lines(out, [r.to_json() for r in missing])
    return records + missing
