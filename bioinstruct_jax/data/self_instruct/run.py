"""The generation loop and the label-only pass: requests in a thread pool, replies absorbed in
request order in the main thread (see the package docstring for the kill-safety protocol)."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import copy
import pathlib
import random
import sys
import time
from typing import Any

from tqdm import tqdm

from bioinstruct_jax.data.filters import RougePool, heuristic_reject
from bioinstruct_jax.data.journal import append_lines, write_json_atomic, write_text_atomic
from bioinstruct_jax.data.labels import label_key, read_label_file, run_label_pass
from bioinstruct_jax.data.llm_client import ChatResult, LLMClient, LLMError
from bioinstruct_jax.data.records import CATEGORIES, InstructionRecord, read_instruction_file
from bioinstruct_jax.data.seeds import load_seeds
from bioinstruct_jax.data.self_instruct.prompt import build_generation_prompt
from bioinstruct_jax.data.self_instruct.reply import parse_generation_reply
from bioinstruct_jax.data.self_instruct.settings import GenerateConfig
from bioinstruct_jax.data.self_instruct.state import (
    GenerationError,
    GenerationInterrupted,
    id_number,
    labels_path_for,
    load_state,
    recover_output,
    sidecar_paths,
)


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
        self.state = load_state(self.state_path, self.out)
        self.records = recover_output(self.out, self.state, self.state_path)
        self.state["written"] = len(self.records)
        self.next_id = 1 + max([id_number(r.id) for r in self.records] + [len(self.records)])
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
        raise ValueError(f"--out {out} is the --input file; the labels go to a file of their own")
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

