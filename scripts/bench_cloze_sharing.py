"""Cloze scoring speed with and without the shared context prefill (infer/choice_scoring.py), on
the same model, items and machine, in one process.

    .venv/bin/python scripts/bench_cloze_sharing.py --data-dir ../shared/data --n 16

The model is the installed SmolLM2-135M-Instruct GGUF file (or --model). Both layouts score the
first N MedQA items in the cloze form (question, then each option's text as the continuation):
once to compile, then the same again timed; the scores must agree (within 1e-3). Printed: seconds per item of each,
their ratio, the CPU (model, cores, avx2 / avx512f / amx flags) and the load average around each.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bioinstruct_jax.eval import tasks as tasks_mod  # noqa: E402
from bioinstruct_jax.eval.prompt_styles import cloze_form  # noqa: E402
from bioinstruct_jax.eval.task_record import DataSource  # noqa: E402
from bioinstruct_jax.infer.choice_scoring import ChoiceScorer  # noqa: E402
from bioinstruct_jax.infer.predictor import load_predictor  # noqa: E402
from bioinstruct_jax.jobs.mini_reproduction import default_model  # noqa: E402
from bench_choice_scoring import cpu_line  # noqa: E402


def timed(predictor, forms, share: bool) -> tuple[float, list[list[float]], str]:
    predictor._choice_scorer = ChoiceScorer(predictor.generator, share_context=share)
    contexts, conts = [f.context for f in forms], [f.continuations for f in forms]
    predictor.score_choices(contexts, conts)  # compiles every shape the timed pass uses
    load = os.getloadavg()[0]
    start = time.perf_counter()
    scores = predictor.score_choices(contexts, conts)
    return time.perf_counter() - start, scores, f"load {load:.2f} -> {os.getloadavg()[0]:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    task = tasks_mod.get_task("medqa")
    forms = [cloze_form(task, ex) for ex in task.load(DataSource(args.data_dir))[:args.n]]
    predictor = load_predictor(args.model or default_model(), batch_size=args.batch_size, dtype="float32")
    print(f"cpu: {cpu_line()}")
    print(f"model: {args.model or default_model()}, MedQA cloze, {len(forms)} items, batch {args.batch_size}")
    rows_s, rows_scores, rows_load = timed(predictor, forms, share=False)
    shared_s, shared_scores, shared_load = timed(predictor, forms, share=True)
    diff = max(abs(a - b) for x, y in zip(rows_scores, shared_scores) for a, b in zip(x, y))
    print(f"one row per (question, option): {rows_s / len(forms):.2f} s/item ({rows_load})")
    print(f"shared question prefill:        {shared_s / len(forms):.2f} s/item ({shared_load})")
    print(f"speedup: {rows_s / shared_s:.2f}x; largest score difference {diff:.2e}")
    assert np.isfinite(diff) and diff < 1e-3, diff


if __name__ == "__main__":
    main()
