"""GPT-4-as-judge for generation tasks: coherence, completeness, naturalness on a 1-5 scale.

The paper reports these three GPT-4 scores but not its judging prompt; `JUDGE_PROMPT` below is
ours. Replies are asked for as JSON and parsed leniently; every reply (parseable or not) is cached
in a JSONL file keyed by sha256(judge model, judge prompt, prediction, reference), so a rerun
makes no API calls. A reply that cannot be read, or a failed call, is counted, never fatal
(failed calls are not cached, so a rerun retries them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
import statistics
from typing import Any, Iterable

from bioinstruct_jax.data.journal import append_lines, read_jsonl_tail_safe
from bioinstruct_jax.data.llm_client import LLMError

CRITERIA = ("coherence", "completeness", "naturalness")

JUDGE_SYSTEM = "You are an experienced physician who grades responses written for clinical text tasks."

JUDGE_PROMPT = """Rate the candidate response to the task below on three criteria, each an integer from 1 (very poor) to 5 (excellent):
- coherence: is it well organised, logically consistent and easy to follow?
- completeness: does it include the clinically important information that the reference response includes?
- naturalness: does it read like fluent text a clinician would write, without repetition or artefacts?
The reference shows the content expected; the candidate's wording may differ from it.

Task: {instruction}

Input:
{input}

Reference response:
{reference}

Candidate response:
{prediction}

Reply with only a JSON object: {{"coherence": n, "completeness": n, "naturalness": n}}"""


def parse_judge_reply(text: str) -> dict[str, int] | None:
    """The three scores (integers 1..5) from a reply, or None.

    Reads the first JSON object in the reply (code fences allowed); failing that,
    "coherence: 4"-style pairs. Any criterion missing or outside 1..5 -> None."""
    if not text:
        return None
    scores: dict[str, Any] = {}
    for m in re.finditer(r"\{[^{}]*\}", text, re.S):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            scores = {str(k).strip().lower(): v for k, v in obj.items()}
            break
    if not scores:
        for c in CRITERIA:
            m = re.search(rf"{c}\W{{0,5}}(\d+(?:\.\d+)?)", text, re.I)
            if m:
                scores[c] = m.group(1)
    out = {}
    for c in CRITERIA:
        try:
            v = float(scores[c])
        except (KeyError, TypeError, ValueError):
            return None
        if not (1 <= v <= 5) or v != int(v):
            return None
        out[c] = int(v)
    return out


@dataclasses.dataclass(frozen=True)
class JudgeResult:
    scores: dict[str, int] | None  # None: unparseable reply or failed call
    raw: str
    cached: bool
    error: str | None = None  # set when the API call failed


class Judge:
    """Scores (prediction, reference) pairs with an OpenAI-compatible chat model, with a cache.

    `client` is a `bioinstruct_jax.data.llm_client.LLMClient` (anything with `chat(messages)`
    returning an object with `.text`); `model` is its model name (part of the cache key)."""

    def __init__(self, client: Any, model: str, cache_path: str | pathlib.Path):
        self.client = client
        self.model = model
        self.cache_path = pathlib.Path(cache_path)
        rows, _ = read_jsonl_tail_safe(self.cache_path)  # drops a line cut short by an interrupted run
        self._cache: dict[str, dict[str, Any]] = {rec["key"]: rec for _, rec in rows
                                                  if isinstance(rec, dict) and "key" in rec}

    def key(self, prompt: str, prediction: str, reference: str) -> str:
        blob = json.dumps([self.model, prompt, prediction, reference], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def judge(self, *, instruction: str, input_text: str, reference: str, prediction: str) -> JudgeResult:
        prompt = JUDGE_PROMPT.format(instruction=instruction, input=input_text,
                                     reference=reference, prediction=prediction)
        key = self.key(prompt, prediction, reference)
        if key in self._cache:
            rec = self._cache[key]
            return JudgeResult(parse_judge_reply(rec["raw"]), rec["raw"], cached=True)
        messages = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]
        try:
            raw = self.client.chat(messages, temperature=0.0, max_tokens=100).text or ""
        except LLMError as e:
            return JudgeResult(None, "", cached=False, error=str(e))
        rec = {"key": key, "model": self.model, "raw": raw, "scores": parse_judge_reply(raw)}
        self._cache[key] = rec
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        append_lines(self.cache_path, [json.dumps(rec, ensure_ascii=False)])
        return JudgeResult(rec["scores"], raw, cached=False)


def aggregate(results: Iterable[JudgeResult]) -> dict[str, float]:
    """Means over readable replies, plus counts: judge_n, judge_unparseable, judge_errors."""
    results = list(results)
    good = [r.scores for r in results if r.scores is not None]
    out: dict[str, float] = {}
    for c in CRITERIA:
        out[f"judge_{c}"] = statistics.fmean(s[c] for s in good) if good else float("nan")
    out["judge_mean"] = statistics.fmean(statistics.fmean(s.values()) for s in good) if good else float("nan")
    out["judge_n"] = len(results)
    out["judge_unparseable"] = sum(r.scores is None and r.error is None for r in results)
    out["judge_errors"] = sum(r.error is not None for r in results)
    return out
