"""`python -m bioinstruct_jax.data.generate`: BioInstruct's self-instruct loop with an
OpenAI-compatible model, and the labelling pass (also alone: `--label-only`).

Each request shows the model three seed tasks drawn at random (an RNG seeded by the run seed and
the request number) as items 1-3 of a numbered `Instruction / Input / Output` list under the
paper's rules, and asks it to continue from item 4 up to 20. Replies are parsed item by item (a
malformed item is counted and skipped). A task joins the pool when it passes the heuristics
(3-150 words, no media words, an output that is not empty and not the input repeated) and its
instruction has ROUGE-L < 0.7 with every instruction already in the pool (seeds included).

Kill safety (SIGKILL or Ctrl-C at any moment loses no accepted task and writes none twice):
requests run in a thread pool, but their replies are absorbed in request order, one at a time, in
the main thread, so a run's output depends only on the replies, not on their timing. Absorbing
request i commits it in two steps: first `<output stem>.progress.json` is replaced atomically with
the counters after request i *and the tasks it accepted* (with their ids), then those tasks are
appended to the output JSONL and fsynced. A rerun with the same --output reads the progress file,
drops a torn last line, appends whatever of the recorded tasks the file lacks, rebuilds the ROUGE
pool from the file and goes on with request i+1. A kill before the progress file is replaced
leaves request i unabsorbed: the rerun asks it again.

Labelling is a separate, resumable pass (`bioinstruct_jax.data.labels`) over the finished file:
labels go to `<output stem>.labels.jsonl` as they arrive, then the output is rewritten (atomically)
with each task's category. A task the model fails to label keeps an empty category and is counted
(`label_failures`, `unlabelled`), never put into "other"; the next run asks for it again. With
`--no-label` a category the model wrote in its reply (`N. Category:`) is kept instead.

`--label-only --input FILE [--output LABELS.jsonl]` runs only the labelling pass on an existing
instruction file (JSON array or JSON lines, e.g. the published 25K file) and writes the labels file
the TFDS builder's `labels_file` reads. `<output stem>.summary.json` is written at the end (and on
Ctrl-C). The API key comes only from the environment and never reaches a message or a file (see
`bioinstruct_jax.data.llm_client`).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import copy
import dataclasses
import json
import os
import pathlib
import random
import re
import sys
import time
from typing import Any

from tqdm import tqdm

from bioinstruct_jax.cli import errors as cli_errors
from bioinstruct_jax.cli import arguments as cli_types
from bioinstruct_jax.cli.arguments import non_negative_float, non_negative_int, positive_float, positive_int, unit_interval
from bioinstruct_jax.config.flags import Flag, add_flags, flag_field, from_args
from bioinstruct_jax.data.filters import REJECT_REASONS, RougePool, heuristic_reject
from bioinstruct_jax.data.journal import append_lines, read_jsonl_tail_safe, write_json_atomic, write_text_atomic
from bioinstruct_jax.data.labels import LabelSettings, label_key, read_label_file, run_label_pass
from bioinstruct_jax.data.records import CATEGORIES, InstructionRecord, RecordError, read_instruction_file
from bioinstruct_jax.data.seeds import DEFAULT_SEEDS_PATH, load_seeds
from bioinstruct_jax.data.llm_client import ChatResult, LLMClient, LLMClientConfig, LLMError

PAPER_NUM_INSTRUCTIONS = 25_005  # the size of the published BioInstruct file (PAPER.md §1)


# --------------------------------------------------------------------------------------------
# The generation prompt (the only place its text lives; the label prompt is in labels.py)
# --------------------------------------------------------------------------------------------
NO_INPUT = "<noinput>"

GENERATION_PROMPT_HEADER = """You are asked to come up with a set of 20 diverse task instructions in biomedicine and clinical care. These task instructions will be given to a language model, and we will evaluate how well it completes them.

Here are the requirements:
1. Try not to repeat the verb for each instruction, to maximize diversity.
2. The language used for the instructions should also be diverse: combine questions with imperative instructions.
3. The types of tasks should be diverse: include question answering (including multiple-choice and yes/no/maybe questions), information extraction, classification, natural language inference, summarization, simplification for patients, clinical note writing, differential diagnosis, clinical trial eligibility, coding, and others.
4. A language model must be able to complete the instruction with text alone: do not ask for or refer to any visual or audio content (images, pictures, graphs, videos, recordings), and do not ask it to take actions in the world.
5. The instructions must be in English.
6. Each instruction must be concise: a single sentence, either an imperative sentence or a question.
7. Write an appropriate input for each instruction: a specific, realistic and substantial biomedical or clinical example (a case vignette, a dialogue, a note excerpt, an abstract, a question with options, ...), never a placeholder. If an instruction needs no input, write "<noinput>" as its input.
8. The output must be a correct and complete response to the instruction and its input, as a careful clinician or biomedical scientist would write it.

List of 20 tasks:
"""


def format_task(n: int, rec: InstructionRecord) -> str:
    inp = rec.input.strip() or NO_INPUT
    return f"{n}. Instruction: {rec.instruction.strip()}\n{n}. Input: {inp}\n{n}. Output: {rec.output.strip()}"


def build_generation_prompt(examples: list[InstructionRecord]) -> str:
    """The request text: rules, the examples as items 1..k, then `k+1. Instruction:`."""
    items = "\n\n".join(format_task(i, rec) for i, rec in enumerate(examples, 1))
    return f"{GENERATION_PROMPT_HEADER}\n{items}\n\n{len(examples) + 1}. Instruction:"



# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------
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




# --------------------------------------------------------------------------------------------
# Config and run state
# --------------------------------------------------------------------------------------------
_DEFAULT_OUTPUT = "data/bioinstruct_generated.jsonl"


@dataclasses.dataclass
class GenerateConfig:
    """The settings of one generation (or --label-only) run; each field declares its own flag(s)."""

    output: str = flag_field(_DEFAULT_OUTPUT, Flag(default=None, help=(
        f"JSONL to append to, resumed if it exists (default {_DEFAULT_OUTPUT}); with --label-only the "
        "labels file (default: <input stem>.labels.jsonl beside the input)")))
    label_only: bool = flag_field(False, Flag(action="store_true", help=(  # label `input` into `output`; no generation
        "only label the tasks of --input (no generation); resumable like generation")))
    input: str | None = flag_field(None, Flag(help="with --label-only: the instruction file (JSON array or JSON lines)"))
    seeds_path: str = flag_field(str(DEFAULT_SEEDS_PATH), Flag("--seeds"))
    num_instructions: int = flag_field(PAPER_NUM_INSTRUCTIONS, Flag(type=positive_int, help=(
        f"tasks to generate (default {PAPER_NUM_INSTRUCTIONS:,}, the paper's count)")))
    model: str = flag_field("gpt-4")
    base_url: str | None = flag_field(None, Flag(help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1"))
    api_key_env: str = flag_field("OPENAI_API_KEY", Flag(help="environment variable holding the API key"))
    concurrency: int = flag_field(4, Flag(type=positive_int))
    temperature: float = flag_field(1.0, Flag(type=non_negative_float))
    top_p: float = flag_field(1.0, Flag(type=unit_interval))
    max_tokens: int = flag_field(3072, Flag(type=positive_int))
    num_prompt_seeds: int = flag_field(3, Flag(type=positive_int))
    seed: int = flag_field(0, Flag(type=int))
    rouge_threshold: float = flag_field(0.7, Flag(type=unit_interval))
    min_words: int = flag_field(3, Flag(type=positive_int))
    max_words: int = flag_field(150, Flag(type=positive_int))
    label_with_model: bool = flag_field(True, Flag(action="store_true"), Flag("--no-label", action="store_false", help=(
        "keep labels the model gave (if any) instead of a labelling pass")))
    label_batch_size: int = flag_field(20, Flag(type=positive_int))
    label_attempts: int = flag_field(2, Flag(type=positive_int, help=(
        "rounds of the labelling pass: a task left unlabelled is asked again in a smaller batch")))
    timeout_s: float = flag_field(120.0, Flag("--timeout", type=positive_float))
    max_retries: int = flag_field(6, Flag(type=non_negative_int))
    backoff_s: float = flag_field(1.0, Flag("--backoff", type=non_negative_float))
    backoff_max_s: float = flag_field(30.0, Flag("--backoff-max", type=non_negative_float))
    max_requests: int | None = flag_field(None, Flag(type=positive_int))  # per invocation; None: no limit
    # consecutive requests with nothing accepted -> stop
    max_unproductive_requests: int = flag_field(200, Flag(type=positive_int))
    progress: bool = flag_field(True, Flag("--no-progress", action="store_false"))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ValueError naming the first setting out of range (the CLI's types refuse them earlier)."""
        checks = [("num_instructions", self.num_instructions >= 1), ("concurrency", self.concurrency >= 1),
                  ("max_tokens", self.max_tokens >= 1), ("num_prompt_seeds", self.num_prompt_seeds >= 1),
                  ("label_batch_size", self.label_batch_size >= 1), ("label_attempts", self.label_attempts >= 1),
                  ("temperature", self.temperature >= 0), ("top_p", 0 < self.top_p <= 1),
                  ("rouge_threshold", 0 < self.rouge_threshold <= 1), ("min_words", self.min_words >= 1),
                  ("max_words", self.max_words >= self.min_words), ("timeout_s", self.timeout_s > 0),
                  ("max_retries", self.max_retries >= 0), ("backoff_s", self.backoff_s >= 0),
                  ("backoff_max_s", self.backoff_max_s >= 0),
                  ("max_requests", self.max_requests is None or self.max_requests >= 1),
                  ("max_unproductive_requests", self.max_unproductive_requests >= 1)]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"generation setting {name}={getattr(self, name)!r} is out of range")

    def client_config(self) -> LLMClientConfig:
        return LLMClientConfig(model=self.model, base_url=self.base_url, api_key_env=self.api_key_env,
                               timeout_s=self.timeout_s, max_retries=self.max_retries,
                               backoff_s=self.backoff_s, backoff_max_s=self.backoff_max_s)

    def label_settings(self) -> LabelSettings:
        return LabelSettings(batch_size=self.label_batch_size, concurrency=self.concurrency,
                             attempts=self.label_attempts)


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


def _fresh_state() -> dict[str, Any]:
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


def _id_number(rec_id: str) -> int:
    m = re.search(r"(\d+)$", rec_id or "")
    return int(m.group(1)) if m else 0


# --------------------------------------------------------------------------------------------
# The generation loop
# --------------------------------------------------------------------------------------------
class _Run:
    def __init__(self, cfg: GenerateConfig, client: LLMClient | None):
        cfg.validate()
        self.cfg = cfg
        self.seeds = load_seeds(cfg.seeds_path)
        if len(self.seeds) < cfg.num_prompt_seeds:
            raise ValueError(f"{cfg.seeds_path}: {len(self.seeds)} seeds, fewer than num_prompt_seeds={cfg.num_prompt_seeds}")
        self.out = pathlib.Path(cfg.output)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.state_path, self.summary_path = sidecar_paths(self.out)
        self.labels_path = labels_path_for(self.out)
        self.state = _fresh_state()
        self.state["written"] = None  # no commit record: the output is trusted as it is
        if self.state_path.exists() and self.out.exists():
            try:
                saved = json.loads(self.state_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise GenerationError(f"{self.state_path}: not valid JSON ({exc.msg}); delete it to resume from "
                                      f"{self.out} alone (its counters restart)") from None
            if "written" not in saved:  # a progress file without the commit record: trust the output
                saved.update(written=None, pending=[],
                             next_request=saved.get("requests", 0) + saved.get("failed_requests", 0))
            self.state.update(saved)
        self.records = self._recover()
        self.state["written"] = len(self.records)
        self.next_id = 1 + max([_id_number(r.id) for r in self.records] + [len(self.records)])
        self.pool = RougePool([s.instruction for s in self.seeds], threshold=cfg.rouge_threshold)
        for rec in self.records:
            self.pool.add(rec.instruction)
        self.client = client or LLMClient(cfg.client_config())
        self.start = time.monotonic()
        self.elapsed_before = float(self.state.get("elapsed_s", 0.0))
        self.label_stats: dict[str, Any] | None = None

    @property
    def written(self) -> int:
        return len(self.records)

    def _recover(self) -> list[InstructionRecord]:
        """The output's records, completed from the progress file's last commit if a kill cut it."""
        records, dropped = load_existing(self.out)
        self.state["truncated_lines_dropped"] += dropped
        written, pending = self.state.get("written"), self.state.get("pending") or []
        if written is None:
            return records
        before = written - len(pending)
        have = len(records)
        if not before <= have <= written:
            raise GenerationError(
                f"{self.out} holds {have} tasks but {self.state_path} records {written} after its last request; "
                f"the output was changed outside this program. Delete {self.state_path} to resume from the "
                "output alone (its counters restart)")
        missing = [InstructionRecord.from_dict(p, f"{self.state_path} (pending)") for p in pending[have - before:]]
        for lineno, (rec, p) in enumerate(zip(records[before:], pending), before + 1):
            if rec.instruction != p.get("instruction"):
                raise GenerationError(f"{self.out}: task {lineno} differs from the one {self.state_path} records "
                                      "there; the output was changed outside this program")
        if missing:
            append_lines(self.out, [r.to_json() for r in missing])
        return records + missing

    # worker thread --------------------------------------------------------------------------
    def request(self, index: int) -> ChatResult:
        rng = random.Random(f"{self.cfg.seed}:{index}")
        examples = rng.sample(self.seeds, self.cfg.num_prompt_seeds)
        prompt = build_generation_prompt(examples)
        return self.client.chat([{"role": "user", "content": prompt}], temperature=self.cfg.temperature,
                                top_p=self.cfg.top_p, max_tokens=self.cfg.max_tokens)

    # main thread ----------------------------------------------------------------------------
    def absorb(self, index: int, fut: cf.Future) -> None:
        """Filter request `index`'s reply and commit it (progress file, then the accepted tasks)."""
        st = copy.deepcopy(self.state)
        new: list[InstructionRecord] = []
        try:
            result = fut.result()
        except LLMError as exc:
            if not exc.retryable:
                raise GenerationError(str(exc)) from None
            st["failed_requests"] += 1
            print(f"request {index} failed: {exc}", file=sys.stderr)
        else:
            st["requests"] += 1
            st["prompt_tokens"] += result.prompt_tokens
            st["completion_tokens"] += result.completion_tokens
            parsed = parse_generation_reply(result.text, self.cfg.num_prompt_seeds + 1,
                                            truncated=result.finish_reason == "length")
            st["malformed_items"] += parsed.malformed
            for task in parsed.tasks:
                if self.written + len(new) >= self.cfg.num_instructions:
                    break
                reason = heuristic_reject(task.instruction, task.input, task.output,
                                          min_words=self.cfg.min_words, max_words=self.cfg.max_words)
                if reason is None and self.pool.is_near_duplicate(task.instruction):
                    reason = "rouge"
                if reason is not None:
                    st["rejected"][reason] = st["rejected"].get(reason, 0) + 1
                    continue
                self.pool.add(task.instruction)
                task.id = f"task_{self.next_id:06d}"
                self.next_id += 1
                new.append(task)
        st["unproductive"] = 0 if new else st["unproductive"] + 1
        st["next_request"] = index + 1
        st["written"] = self.written + len(new)
        st["pending"] = [t.to_dict() for t in new]
        self._save(st)  # step 1: the commit record, with the tasks themselves
        append_lines(self.out, [t.to_json() for t in new])  # step 2: the tasks
        self.state = st
        self.records.extend(new)

    def _save(self, st: dict[str, Any]) -> None:
        st["elapsed_s"] = self.elapsed_before + time.monotonic() - self.start
        write_json_atomic(self.state_path, st)

    def add_unused(self, futures: list[cf.Future]) -> None:
        """Count the tokens of replies that arrived after the target was reached (paid for, not used)."""
        st = copy.deepcopy(self.state)
        for fut in futures:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                res = fut.result()
                st["unused_replies"] += 1
                st["prompt_tokens"] += res.prompt_tokens
                st["completion_tokens"] += res.completion_tokens
        self._save(st)
        self.state = st

    def label(self) -> None:
        """The labelling pass over the output, then the output rewritten with the categories."""
        todo_bar = tqdm(total=self.written, unit="label", desc="labels", disable=not self.cfg.progress,
                        file=sys.stderr, dynamic_ncols=True)
        try:
            labels, stats = run_label_pass(self.records, self.labels_path, self.client, self.cfg.label_settings(),
                                           progress=todo_bar.update)
        finally:
            todo_bar.close()
        changed = False
        for rec in self.records:
            cat = labels.get(label_key(rec), "")
            changed |= rec.category != cat
            rec.category = cat
        if changed:
            write_text_atomic(self.out, "".join(r.to_json() + "\n" for r in self.records))
        st = copy.deepcopy(self.state)
        st["label_requests"] += stats.label_requests
        st["prompt_tokens"] += stats.prompt_tokens
        st["completion_tokens"] += stats.completion_tokens
        self._save(st)
        self.state = st
        self.label_stats = stats.as_dict()

    def postfix(self) -> str:
        rej = ",".join(f"{k}={v}" for k, v in self.state["rejected"].items() if v)
        tok = self.state["prompt_tokens"] + self.state["completion_tokens"]
        return f"rej[{rej or 0}] malformed={self.state['malformed_items']} tok={tok:,}"

    def summary(self, *, interrupted: bool = False) -> dict[str, Any]:
        cats = collections.Counter(r.category for r in self.records)
        st = self.state
        generated = self.written >= self.cfg.num_instructions
        ls = self.label_stats or {}
        unlabelled = cats.get("", 0) if self.cfg.label_with_model else 0
        return {
            "output": str(self.out), "complete": generated and not interrupted and unlabelled == 0,
            "generation_complete": generated, "interrupted": interrupted,
            "target": self.cfg.num_instructions, "accepted": self.written, "rejected": dict(st["rejected"]),
            "rejected_total": sum(st["rejected"].values()), "malformed_items": st["malformed_items"],
            "requests": st["requests"], "failed_requests": st["failed_requests"],
            "unused_replies": st["unused_replies"],
            "prompt_tokens": st["prompt_tokens"], "completion_tokens": st["completion_tokens"],
            "label_counts": {c: cats.get(c, 0) for c in (*CATEGORIES, "")},
            "labels_file": str(self.labels_path) if self.cfg.label_with_model else None,
            "label_requests": st["label_requests"], "label_failures": ls.get("label_failures", 0),
            "unlabelled": unlabelled,
            "truncated_lines_dropped": st["truncated_lines_dropped"], "elapsed_s": round(st["elapsed_s"], 3),
            "model": self.cfg.model, "base_url": self.cfg.base_url, "temperature": self.cfg.temperature,
            "top_p": self.cfg.top_p, "seed": self.cfg.seed, "rouge_threshold": self.cfg.rouge_threshold,
        }


def run(cfg: GenerateConfig, client: LLMClient | None = None) -> dict[str, Any]:
    """Generate until the output holds cfg.num_instructions tasks, then label them; returns the
    summary (also written to `<output stem>.summary.json`). Ctrl-C raises GenerationInterrupted."""
    r = _Run(cfg, client)
    bar = tqdm(total=cfg.num_instructions, initial=min(r.written, cfg.num_instructions), unit="task",
               disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True)
    pool = cf.ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="generate")
    inflight: dict[cf.Future, int] = {}
    ready: dict[int, cf.Future] = {}  # finished, waiting for the requests before them
    next_submit = r.state["next_request"]
    submitted = 0
    interrupted = False
    try:
        try:
            while r.written < cfg.num_instructions:
                while (len(inflight) < cfg.concurrency and len(ready) < 4 * cfg.concurrency
                       and (cfg.max_requests is None or submitted < cfg.max_requests)):
                    inflight[pool.submit(r.request, next_submit)] = next_submit
                    next_submit += 1
                    submitted += 1
                if not inflight and not ready:
                    break  # max_requests reached
                if r.state["next_request"] not in ready:
                    done, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        ready[inflight.pop(fut)] = fut
                while r.state["next_request"] in ready and r.written < cfg.num_instructions:
                    index = r.state["next_request"]
                    r.absorb(index, ready.pop(index))
                    bar.n = min(r.written, cfg.num_instructions)
                    bar.set_postfix_str(r.postfix(), refresh=True)
                    if r.state["unproductive"] >= cfg.max_unproductive_requests:
                        raise GenerationError(
                            f"{r.state['unproductive']} requests in a row gave no accepted task; stopping "
                            f"(see {r.summary_path} for rejection reasons)")
            r.add_unused(list(ready.values()) + list(inflight))
        finally:
            for fut in inflight:
                fut.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            bar.n = min(r.written, cfg.num_instructions)
            bar.close()
        if cfg.label_with_model:
            r.label()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        summary = r.summary(interrupted=interrupted)
        write_json_atomic(r.summary_path, summary)
    if interrupted:
        raise GenerationInterrupted(summary)
    return summary


# --------------------------------------------------------------------------------------------
# Label-only mode
# --------------------------------------------------------------------------------------------
def label_only(cfg: GenerateConfig, client: LLMClient | None = None) -> dict[str, Any]:
    """Label the tasks of `cfg.input` (JSON array or JSON lines) into the labels file `cfg.output`;
    returns the summary (also in `<output stem>.summary.json`). Ctrl-C raises GenerationInterrupted."""
    cfg.validate()
    if not cfg.input:
        raise ValueError("--label-only needs --input FILE (the instruction file to label)")
    src = pathlib.Path(cfg.input)
    if not src.is_file():
        raise FileNotFoundError(f"instruction file {src} does not exist")
    out = pathlib.Path(cfg.output)
    if out.resolve() == src.resolve():
        raise ValueError(f"--output {out} is the --input file; the labels go to a file of their own")
    records, _ = read_instruction_file(src)
    client = client or LLMClient(cfg.client_config())
    summary_path = sidecar_paths(out)[1]
    start = time.monotonic()
    bar = tqdm(total=len({label_key(r) for r in records}), unit="label", desc="labels", disable=not cfg.progress,
               file=sys.stderr, dynamic_ncols=True)
    summary: dict[str, Any] = {"input": str(src), "output": str(out), "records": len(records),
                               "model": cfg.model, "base_url": cfg.base_url}
    try:
        _, stats = run_label_pass(records, out, client, cfg.label_settings(), progress=bar.update)
    except KeyboardInterrupt:
        bar.close()
        summary.update(interrupted=True, complete=False, labelled_so_far=len(read_label_file(out)))
        write_json_atomic(summary_path, summary)
        raise GenerationInterrupted(summary) from None
    bar.close()
    summary.update(stats.as_dict(), interrupted=False, complete=stats.unlabelled == 0,
                   elapsed_s=round(time.monotonic() - start, 3))
    write_json_atomic(summary_path, summary)
    return summary


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> GenerateConfig:
    p = cli_types.ArgumentParser(prog="python -m bioinstruct_jax.data.generate",
                                description="Generate BioInstruct-style tasks from seeds with an OpenAI-compatible "
                                            "model and label them; or (--label-only) label an existing file.")
    add_flags(p, GenerateConfig)
    args = p.parse_args(argv)
    if args.input and not args.label_only:
        p.error("--input is only used with --label-only")
    if args.label_only and not args.input:
        p.error("--label-only needs --input FILE")
    if args.output is None:
        args.output = str(pathlib.Path(args.input).with_suffix(".labels.jsonl")) if args.label_only else _DEFAULT_OUTPUT
    return from_args(GenerateConfig, args)


def _interrupted_line(cfg: GenerateConfig, s: dict[str, Any]) -> str:
    if cfg.label_only:
        return (f"interrupted: {s.get('labelled_so_far', 0)} of {s.get('records', 0)} tasks labelled in {cfg.output}; "
                "run the same command again to resume")
    return (f"interrupted: {s['accepted']} of {s['target']} tasks saved in {s['output']}; "
            "run the same command again to resume")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        summary = label_only(cfg) if cfg.label_only else run(cfg)
        print(json.dumps(summary, indent=2))
    except GenerationInterrupted as exc:
        print(_interrupted_line(cfg, exc.summary), file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # after the work was saved (while printing)
        print(f"interrupted; everything done is saved in {cfg.output}", file=sys.stderr)
        return 130
    except (GenerationError, LLMError, RecordError, FileNotFoundError, ValueError) as exc:
        if os.environ.get("BIOINSTRUCT_DEBUG") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    unlabelled = summary.get("unlabelled", 0)
    if unlabelled:
        what = summary["output"] if cfg.label_only else summary["labels_file"]
        print(f"{unlabelled} tasks could not be labelled (unreadable or failed label replies) and are left out "
              f"of {what}; run the same command again to ask for them again", file=sys.stderr)
    return 0 if summary["complete"] else 1


def run_command() -> None:
    """`python -m bioinstruct_jax.data.generate`: run `main` and exit with its code."""
    code = cli_errors.run(main)
    if code == cli_errors.EXIT_INTERRUPTED:  # Ctrl-C: do not wait for requests still in flight in worker threads
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
