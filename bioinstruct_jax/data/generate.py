"""`python -m bioinstruct_jax.data.generate`: BioInstruct's self-instruct loop with an
OpenAI-compatible model.

Each request shows the model three seed tasks drawn at random (an RNG seeded by the run seed and
the request number) as items 1-3 of a numbered `Instruction / Input / Output` list under the
paper's rules, and asks it to continue from item 4 up to 20. Replies are parsed item by item (a
malformed item is counted and skipped). A task joins the pool when it passes the heuristics
(3-150 words, no media words, an output that is not empty and not the input repeated) and its
instruction has ROUGE-L < 0.7 with every instruction already in the pool (seeds included). Kept
tasks are labelled qa/ie/gen/other by the model in batched numbered lists (`--no-label` keeps a
label the model gave, if any), then appended to the output JSONL.

Requests run in a thread pool; parsing, filtering, labelling and writing happen in the main thread
so the pool and the file stay consistent. A rerun with the same --output resumes: the existing
file (a truncated last line from a kill is dropped and the file rewritten) seeds the ROUGE pool,
so nothing is written twice, and `<output stem>.progress.json` carries the counters and the
request number. `<output stem>.summary.json` is written at the end. The API key comes only from
the environment (see `bioinstruct_jax.llm_client`).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import dataclasses
import json
import os
import pathlib
import random
import re
import sys
import time
from typing import Any

from bioinstruct_jax import cli_errors
from bioinstruct_jax.data.filters import REJECT_REASONS, RougePool, heuristic_reject
from bioinstruct_jax.data.records import CATEGORIES, InstructionRecord, RecordError
from bioinstruct_jax.data.seeds import DEFAULT_SEEDS_PATH, load_seeds
from bioinstruct_jax.llm_client import ChatResult, LLMClient, LLMClientConfig, LLMError

# --------------------------------------------------------------------------------------------
# Prompts (the only place their text lives)
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

LABEL_PROMPT_HEADER = """Classify each biomedical task below into exactly one category:
qa - question answering: the task asks to answer a question (multiple choice, yes/no/maybe, short or open answer) or to judge whether one statement follows from another.
ie - information extraction: the task asks to find, extract, tag, normalize, code or classify information that is present in a given text.
gen - generation: the task asks to write new text, such as a summary, a clinical note, an explanation, a simplification or a letter.
other - anything else, such as recommendations, planning, trial matching or triage.

Reply with exactly one line per task, in the form "N. label", where label is one of qa, ie, gen, other, and nothing else.

Tasks:
"""


def format_task(n: int, rec: InstructionRecord) -> str:
    inp = rec.input.strip() or NO_INPUT
    return f"{n}. Instruction: {rec.instruction.strip()}\n{n}. Input: {inp}\n{n}. Output: {rec.output.strip()}"


def build_generation_prompt(examples: list[InstructionRecord]) -> str:
    """The request text: rules, the examples as items 1..k, then `k+1. Instruction:`."""
    items = "\n\n".join(format_task(i, rec) for i, rec in enumerate(examples, 1))
    return f"{GENERATION_PROMPT_HEADER}\n{items}\n\n{len(examples) + 1}. Instruction:"


def build_label_prompt(records: list[InstructionRecord], input_chars: int = 200) -> str:
    lines = []
    for i, rec in enumerate(records, 1):
        line = f"{i}. {rec.instruction.strip()}"
        snippet = " ".join(rec.input.split())[:input_chars]
        if snippet:
            line += f" [input: {snippet}]"
        lines.append(line)
    return LABEL_PROMPT_HEADER + "\n".join(lines)


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


# --------------------------------------------------------------------------------------------
# Config and run state
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class GenerateConfig:
    output: str = "data/bioinstruct_generated.jsonl"
    seeds_path: str = str(DEFAULT_SEEDS_PATH)
    num_instructions: int = 25000
    model: str = "gpt-4"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 3072
    num_prompt_seeds: int = 3
    seed: int = 0
    rouge_threshold: float = 0.7
    min_words: int = 3
    max_words: int = 150
    label_with_model: bool = True
    label_batch_size: int = 20
    timeout_s: float = 120.0
    max_retries: int = 6
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    max_requests: int | None = None  # per invocation; None: no limit
    max_unproductive_requests: int = 200  # consecutive requests with nothing accepted -> stop
    progress: bool = True

    def client_config(self) -> LLMClientConfig:
        return LLMClientConfig(model=self.model, base_url=self.base_url, api_key_env=self.api_key_env,
                               timeout_s=self.timeout_s, max_retries=self.max_retries,
                               backoff_s=self.backoff_s, backoff_max_s=self.backoff_max_s)


class GenerationError(RuntimeError):
    """The run cannot go on (bad key, unknown model, no progress)."""


def sidecar_paths(output: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(progress state, summary) paths next to the output file."""
    out = pathlib.Path(output)
    return out.with_suffix(".progress.json"), out.with_suffix(".summary.json")


def _fresh_state() -> dict[str, Any]:
    return {"requests": 0, "failed_requests": 0, "malformed_items": 0, "truncated_lines_dropped": 0,
            "rejected": {r: 0 for r in REJECT_REASONS}, "prompt_tokens": 0, "completion_tokens": 0,
            "label_requests": 0, "label_failures": 0, "elapsed_s": 0.0}


def load_existing(path: pathlib.Path) -> tuple[list[InstructionRecord], int]:
    """Records already written, and how many broken lines were dropped. Only the last line may
    be broken (a kill mid-write); the file is then rewritten without it. Elsewhere a broken line
    is an error naming file and line."""
    if not path.exists():
        return [], 0
    raw = path.read_text(encoding="utf-8")
    lines = raw.split("\n")
    complete_end = raw.endswith("\n")
    if complete_end:
        lines = lines[:-1]
    records: list[InstructionRecord] = []
    dropped = 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        is_last = lineno == len(lines)
        try:
            records.append(InstructionRecord.from_dict(json.loads(line), f"{path}:{lineno}"))
        except (json.JSONDecodeError, RecordError) as exc:
            if is_last and not complete_end:
                dropped += 1
                continue
            raise RecordError(f"{path}:{lineno}: cannot resume from a broken line ({exc})") from None
    if dropped or not complete_end and raw:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("".join(r.to_json() + "\n" for r in records), encoding="utf-8")
        os.replace(tmp, path)
    return records, dropped


def _write_json(path: pathlib.Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
class _Run:
    def __init__(self, cfg: GenerateConfig, client: LLMClient | None):
        if cfg.num_prompt_seeds < 1 or cfg.concurrency < 1 or cfg.label_batch_size < 1:
            raise ValueError("num_prompt_seeds, concurrency and label_batch_size must be >= 1")
        self.cfg = cfg
        self.seeds = load_seeds(cfg.seeds_path)
        if len(self.seeds) < cfg.num_prompt_seeds:
            raise ValueError(f"{cfg.seeds_path}: {len(self.seeds)} seeds, fewer than num_prompt_seeds={cfg.num_prompt_seeds}")
        self.out = pathlib.Path(cfg.output)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.state_path, self.summary_path = sidecar_paths(self.out)
        self.state = _fresh_state()
        if self.state_path.exists() and self.out.exists():
            self.state.update(json.loads(self.state_path.read_text(encoding="utf-8")))
        existing, dropped = load_existing(self.out)
        self.state["truncated_lines_dropped"] += dropped
        self.written = len(existing)
        self.next_id = 1 + max([_id_number(r.id) for r in existing] + [len(existing)])
        self.pool = RougePool([s.instruction for s in self.seeds], threshold=cfg.rouge_threshold)
        for rec in existing:
            self.pool.add(rec.instruction)
        self.client = client or LLMClient(cfg.client_config())
        self.buffer: list[InstructionRecord] = []
        self.unproductive = 0
        self.start = time.monotonic()
        self.elapsed_before = float(self.state.get("elapsed_s", 0.0))

    # worker thread --------------------------------------------------------------------------
    def request(self, index: int) -> ChatResult:
        rng = random.Random(f"{self.cfg.seed}:{index}")
        examples = rng.sample(self.seeds, self.cfg.num_prompt_seeds)
        prompt = build_generation_prompt(examples)
        return self.client.chat([{"role": "user", "content": prompt}], temperature=self.cfg.temperature,
                                top_p=self.cfg.top_p, max_tokens=self.cfg.max_tokens)

    # main thread ----------------------------------------------------------------------------
    @property
    def accepted(self) -> int:
        return self.written + len(self.buffer)

    def absorb(self, result: ChatResult) -> None:
        st = self.state
        parsed = parse_generation_reply(result.text, self.cfg.num_prompt_seeds + 1,
                                        truncated=result.finish_reason == "length")
        st["malformed_items"] += parsed.malformed
        taken = 0
        for task in parsed.tasks:
            if self.accepted >= self.cfg.num_instructions:
                break
            reason = heuristic_reject(task.instruction, task.input, task.output,
                                      min_words=self.cfg.min_words, max_words=self.cfg.max_words)
            if reason is None and self.pool.is_near_duplicate(task.instruction):
                reason = "rouge"
            if reason is not None:
                st["rejected"][reason] = st["rejected"].get(reason, 0) + 1
                continue
            self.pool.add(task.instruction)
            self.buffer.append(task)
            taken += 1
        self.unproductive = 0 if taken else self.unproductive + 1
        if not self.cfg.label_with_model or len(self.buffer) >= self.cfg.label_batch_size:
            self.flush()

    def label(self, records: list[InstructionRecord]) -> None:
        for start in range(0, len(records), self.cfg.label_batch_size):
            batch = records[start : start + self.cfg.label_batch_size]
            self.state["label_requests"] += 1
            try:
                res = self.client.chat([{"role": "user", "content": build_label_prompt(batch)}],
                                       temperature=0.0, max_tokens=8 * len(batch) + 32)
            except LLMError as exc:
                if not exc.retryable:
                    raise GenerationError(f"labelling failed: {exc}") from None
                labels: list[str | None] = [None] * len(batch)
            else:
                self.state["prompt_tokens"] += res.prompt_tokens
                self.state["completion_tokens"] += res.completion_tokens
                labels = parse_labels(res.text, len(batch))
            for rec, lab in zip(batch, labels):
                if lab is None:
                    self.state["label_failures"] += 1
                rec.category = lab or "other"

    def flush(self) -> None:
        """Label (if asked) and append the buffered tasks, then save the state."""
        if self.buffer:
            if self.cfg.label_with_model:
                self.label(self.buffer)
            with self.out.open("a", encoding="utf-8") as f:
                for rec in self.buffer:
                    rec.id = f"task_{self.next_id:06d}"
                    self.next_id += 1
                    f.write(rec.to_json() + "\n")
                f.flush()
            self.written += len(self.buffer)
            self.buffer = []
        self.save_state()

    def save_state(self) -> None:
        self.state["elapsed_s"] = self.elapsed_before + time.monotonic() - self.start
        _write_json(self.state_path, self.state)

    def postfix(self) -> str:
        rej = ",".join(f"{k}={v}" for k, v in self.state["rejected"].items() if v)
        tok = self.state["prompt_tokens"] + self.state["completion_tokens"]
        return f"rej[{rej or 0}] malformed={self.state['malformed_items']} tok={tok:,}"

    def summary(self, complete: bool) -> dict[str, Any]:
        cats = collections.Counter()
        if self.out.exists():
            with self.out.open(encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        cats[json.loads(line).get("category", "")] += 1
        st = self.state
        return {
            "output": str(self.out), "complete": complete, "target": self.cfg.num_instructions,
            "accepted": self.written, "rejected": dict(st["rejected"]),
            "rejected_total": sum(st["rejected"].values()), "malformed_items": st["malformed_items"],
            "requests": st["requests"], "failed_requests": st["failed_requests"],
            "prompt_tokens": st["prompt_tokens"], "completion_tokens": st["completion_tokens"],
            "label_counts": {c: cats.get(c, 0) for c in (*CATEGORIES, "")},
            "label_requests": st["label_requests"], "label_failures": st["label_failures"],
            "truncated_lines_dropped": st["truncated_lines_dropped"], "elapsed_s": round(st["elapsed_s"], 3),
            "model": self.cfg.model, "base_url": self.cfg.base_url, "temperature": self.cfg.temperature,
            "top_p": self.cfg.top_p, "seed": self.cfg.seed, "rouge_threshold": self.cfg.rouge_threshold,
        }


def _id_number(rec_id: str) -> int:
    m = re.search(r"(\d+)$", rec_id or "")
    return int(m.group(1)) if m else 0


def run(cfg: GenerateConfig, client: LLMClient | None = None) -> dict[str, Any]:
    """Generate until the output holds cfg.num_instructions tasks; returns the summary (also
    written to `<output stem>.summary.json`)."""
    from tqdm import tqdm

    r = _Run(cfg, client)
    complete = False
    bar = tqdm(total=cfg.num_instructions, initial=min(r.written, cfg.num_instructions), unit="task",
               disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True)
    pool = cf.ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="generate")
    pending: dict[cf.Future, int] = {}
    submitted = 0
    try:
        while r.accepted < cfg.num_instructions:
            while len(pending) < cfg.concurrency and (cfg.max_requests is None or submitted < cfg.max_requests):
                index = r.state["requests"] + r.state["failed_requests"] + len(pending)
                pending[pool.submit(r.request, index)] = index
                submitted += 1
            if not pending:
                break  # max_requests reached
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in sorted(done, key=pending.__getitem__):
                del pending[fut]
                try:
                    result = fut.result()
                except LLMError as exc:
                    if not exc.retryable:
                        raise GenerationError(str(exc)) from None
                    r.state["failed_requests"] += 1
                    r.unproductive += 1
                    print(f"request failed: {exc}", file=sys.stderr)
                else:
                    r.state["requests"] += 1
                    r.state["prompt_tokens"] += result.prompt_tokens
                    r.state["completion_tokens"] += result.completion_tokens
                    if r.accepted < cfg.num_instructions:
                        r.absorb(result)
                r.save_state()
                bar.n = min(r.written, cfg.num_instructions)
                bar.set_postfix_str(r.postfix(), refresh=True)
            if r.unproductive >= cfg.max_unproductive_requests:
                raise GenerationError(
                    f"{r.unproductive} requests in a row gave no accepted task; stopping "
                    f"(see {r.summary_path} for rejection reasons)")
        r.flush()
        complete = r.written >= cfg.num_instructions
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        bar.n = min(r.written, cfg.num_instructions)
        bar.close()
        r.save_state()
        summary = r.summary(complete)
        _write_json(r.summary_path, summary)
    return summary


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> GenerateConfig:
    d = GenerateConfig()
    p = argparse.ArgumentParser(prog="python -m bioinstruct_jax.data.generate",
                                description="Generate BioInstruct-style tasks from seeds with an OpenAI-compatible model.")
    p.add_argument("--output", default=d.output, help="JSONL to append to (resumed if it exists)")
    p.add_argument("--seeds", dest="seeds_path", default=d.seeds_path)
    p.add_argument("--num-instructions", type=int, default=d.num_instructions)
    p.add_argument("--model", default=d.model)
    p.add_argument("--base-url", default=d.base_url, help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    p.add_argument("--api-key-env", default=d.api_key_env, help="environment variable holding the API key")
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--max-tokens", type=int, default=d.max_tokens)
    p.add_argument("--num-prompt-seeds", type=int, default=d.num_prompt_seeds)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--rouge-threshold", type=float, default=d.rouge_threshold)
    p.add_argument("--min-words", type=int, default=d.min_words)
    p.add_argument("--max-words", type=int, default=d.max_words)
    p.add_argument("--label-with-model", dest="label_with_model", action="store_true", default=d.label_with_model)
    p.add_argument("--no-label", dest="label_with_model", action="store_false",
                   help="keep labels the model gave (if any) instead of a labelling request")
    p.add_argument("--label-batch-size", type=int, default=d.label_batch_size)
    p.add_argument("--timeout", dest="timeout_s", type=float, default=d.timeout_s)
    p.add_argument("--max-retries", type=int, default=d.max_retries)
    p.add_argument("--backoff", dest="backoff_s", type=float, default=d.backoff_s)
    p.add_argument("--backoff-max", dest="backoff_max_s", type=float, default=d.backoff_max_s)
    p.add_argument("--max-requests", type=int, default=d.max_requests)
    p.add_argument("--max-unproductive-requests", type=int, default=d.max_unproductive_requests)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=d.progress)
    return GenerateConfig(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        summary = run(cfg)
    except (GenerationError, LLMError, RecordError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0 if summary["complete"] else 1


if __name__ == "__main__":
    sys.exit(cli_errors.run(main))
