"""The labelling pass: tasks -> qa / ie / gen / other by a chat model, resumable.

Tasks are shown to the model in numbered batches (`build_label_prompt`), and each reply line
"N. label" is read by `parse_labels`. Every label the model gives is appended at once (fsync) to a
labels file of JSON lines `{"id"?, "instruction", "category"}`, the shape the TFDS builder's
`labels_file` reads. A task is identified by its id, or by its stripped instruction when it has
none (the published 25K file has no ids). A rerun reads the labels file and asks only for the
tasks not in it yet, so a kill loses at most the batches in flight and never writes a task twice.

A task the model does not label (a reply line missing or unreadable, or a request that failed
after its retries) is asked again once more in a smaller batch (`attempts`), then counted as a
label failure and left out of the labels file: it stays unlabelled (never put into "other"), and
the next run asks for it again. `run_label_pass` returns the counts.

Used by `python -m bioinstruct_jax.data.generate` after generation, and alone with `--label-only`.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import json
import pathlib
import re
from typing import Any, Sequence

from bioinstruct_jax.data.journal import append_lines, read_jsonl_tail_safe
from bioinstruct_jax.data.records import CATEGORIES, InstructionRecord, label_keys
from bioinstruct_jax.data.llm_client import LLMClient, LLMError

LABEL_PROMPT_HEADER = """Classify each biomedical task below into exactly one category:
qa - question answering: the task asks to answer a question (multiple choice, yes/no/maybe, short or open answer) or to judge whether one statement follows from another.
ie - information extraction: the task asks to find, extract, tag, normalize, code or classify information that is present in a given text.
gen - generation: the task asks to write new text, such as a summary, a clinical note, an explanation, a simplification or a letter.
other - anything else, such as recommendations, planning, trial matching or triage.

Reply with exactly one line per task, in the form "N. label", where label is one of qa, ie, gen, other, and nothing else.

Tasks:
"""


def build_label_prompt(records: Sequence[InstructionRecord], input_chars: int = 200) -> str:
    lines = []
    for i, rec in enumerate(records, 1):
        line = f"{i}. {rec.instruction.strip()}"
        snippet = " ".join(rec.input.split())[:input_chars]
        if snippet:
            line += f" [input: {snippet}]"
        lines.append(line)
    return LABEL_PROMPT_HEADER + "\n".join(lines)


_LABEL_LINE_RE = re.compile(r"^[\s*_`#>-]*(\d+)\s*[.):\-]\s*[*_`\"']*\s*([A-Za-z][A-Za-z ]*)", re.M)
_LABEL_WORDS = {
    "qa": "qa", "question answering": "qa", "question": "qa",
    "ie": "ie", "information extraction": "ie", "extraction": "ie",
    "gen": "gen", "generation": "gen", "text generation": "gen",
    "other": "other", "others": "other",
}


def parse_labels(text: str, n: int) -> list[str | None]:
    """Labels for tasks 1..n from "N. label" lines; None where missing or unreadable."""
    labels: list[str | None] = [None] * n
    for m in _LABEL_LINE_RE.finditer(text):
        i = int(m.group(1)) - 1
        word = " ".join(m.group(2).lower().split())
        label = _LABEL_WORDS.get(word) or _LABEL_WORDS.get(word.split(" ")[0])
        if 0 <= i < n and labels[i] is None and label:
            labels[i] = label
    return labels


def label_key(rec: InstructionRecord) -> str:
    """How a task is found in a labels file (the TFDS builder's rule: id first, else instruction)."""
    return f"id:{rec.id}" if rec.id else f"ins:{rec.instruction.strip()}"


def read_label_file(path: pathlib.Path) -> dict[str, str]:
    """{label_key: category} of a labels file (a torn last line from a kill is dropped)."""
    labels: dict[str, str] = {}
    rows, _ = read_jsonl_tail_safe(path)
    for lineno, obj in rows:
        cat, keys = label_keys(obj, f"{path}:{lineno}")
        for key in keys:
            if key.startswith("id:"):
                labels[key] = cat
            else:
                labels.setdefault(key, cat)
    return labels


@dataclasses.dataclass
class LabelSettings:
    batch_size: int = 20
    concurrency: int = 4
    attempts: int = 2  # rounds: a task the model did not label is asked again in the next round


@dataclasses.dataclass
class LabelStats:
    tasks: int = 0  # distinct tasks (by label_key)
    already_labelled: int = 0  # found in the labels file at the start
    labelled: int = 0  # labelled by this run
    label_failures: int = 0  # left unlabelled by this run (after every attempt)
    label_requests: int = 0
    failed_label_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    label_counts: dict[str, int] = dataclasses.field(default_factory=dict)  # over all labelled tasks
    unlabelled_examples: list[str] = dataclasses.field(default_factory=list)  # a few keys, for the message

    @property
    def unlabelled(self) -> int:
        return self.tasks - self.already_labelled - self.labelled

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["unlabelled"] = self.unlabelled
        return d


def _label_row(rec: InstructionRecord, category: str) -> str:
    row = {"id": rec.id} if rec.id else {}
    row.update(instruction=rec.instruction.strip(), category=category)
    return json.dumps(row, ensure_ascii=False)


def run_label_pass(records: Sequence[InstructionRecord], labels_path: pathlib.Path, client: LLMClient,
                   settings: LabelSettings, progress: Any = None) -> tuple[dict[str, str], LabelStats]:
    """Label every task of `records` not yet in `labels_path`; returns ({label_key: category}, stats).

    `progress` (optional) is called with the number of tasks labelled before this run, then with
    the number each batch labels (a tqdm bar's `update`). A
    non-retryable server error (bad key, unknown model) raises LLMError; labels written before it
    stay in the file."""
    if settings.batch_size < 1 or settings.concurrency < 1 or settings.attempts < 1:
        raise ValueError("label batch_size, concurrency and attempts must be >= 1")
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    labels_path.touch()  # exists even when no label could be read
    labels = read_label_file(labels_path)
    unique: dict[str, InstructionRecord] = {}
    for rec in records:
        unique.setdefault(label_key(rec), rec)
    stats = LabelStats(tasks=len(unique))
    todo = [k for k in unique if k not in labels]
    stats.already_labelled = stats.tasks - len(todo)
    if progress is not None:
        progress(stats.already_labelled)

    def ask(batch: list[str]) -> tuple[list[str], list[str | None], Any]:
        recs = [unique[k] for k in batch]
        try:
            res = client.chat([{"role": "user", "content": build_label_prompt(recs)}],
                              temperature=0.0, max_tokens=8 * len(batch) + 32)
        except LLMError as exc:
            if not exc.retryable:
                raise
            return batch, [None] * len(batch), None
        return batch, parse_labels(res.text, len(batch)), res

    for attempt in range(settings.attempts):
        if not todo:
            break
        size = settings.batch_size if attempt == 0 else max(1, settings.batch_size // (2 * attempt))
        batches = [todo[i:i + size] for i in range(0, len(todo), size)]
        missed: list[str] = []
        pool = cf.ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="label")
        try:
            futures = [pool.submit(ask, b) for b in batches]
            for fut in cf.as_completed(futures):
                batch, got, res = fut.result()
                stats.label_requests += 1
                if res is None:
                    stats.failed_label_requests += 1
                else:
                    stats.prompt_tokens += res.prompt_tokens
                    stats.completion_tokens += res.completion_tokens
                rows = []
                for key, lab in zip(batch, got):
                    if lab is None:
                        missed.append(key)
                    else:
                        labels[key] = lab
                        rows.append(_label_row(unique[key], lab))
                append_lines(labels_path, rows)
                stats.labelled += len(rows)
                if progress is not None:
                    progress(len(rows))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        order = {k: i for i, k in enumerate(todo)}
        todo = sorted(missed, key=order.__getitem__)
    stats.label_failures = len(todo)
    stats.unlabelled_examples = todo[:5]
    counts = collections.Counter(labels[k] for k in unique if k in labels)
    stats.label_counts = {c: counts.get(c, 0) for c in CATEGORIES}
    return labels, stats
