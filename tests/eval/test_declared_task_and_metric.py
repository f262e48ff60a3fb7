"""A task declared by one `tasks.TASKS` entry and a metric declared by one
`metric_registry.METRICS` entry, with nothing else changed, run through `python -m
bioinstruct_jax.eval` on a tiny random model: the metric is computed into results.json and
printed, and `compare` bootstraps it as a corpus metric (recomputed on each resample)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from bioinstruct_jax.eval import compare, loaders, metric_registry, tasks

REPO = pathlib.Path(__file__).resolve().parents[2]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
ITEMS = [{"instruction": "", "input": f"What drug treats condition {i}?", "output": f"drug number {i} daily" + " at night" * i}
         for i in range(6)]


def reply_length_ratio(records):
    """100 x all reply characters / all reference characters (a corpus ratio, not a mean)."""
    return {"reply_length_ratio": 100.0 * sum(len(r["pred"] or "") for r in records)
            / sum(len(r["gold"]) for r in records)}


# The two entries, as they would be written in metric_registry.py and tasks.py.
METRIC = metric_registry.Metric("reply_length_ratio", ("reply_length_ratio",), reply_length_ratio,
                                metric_registry.CORPUS, rows=("reply_length_ratio",))


def toy_task() -> tasks.Task:
    """The task entry (built once the metric is registered: a record checks its metric names)."""
    return tasks.Task("toy_drugs", tasks.GEN, "Answer the question in a few words.",
                      test=lambda d: loaders.load_instruction_jsonl(d.resolve("toy_drugs", "toy/test.jsonl")),
                      train=lambda d: loaders.load_instruction_jsonl(d.resolve("toy_drugs.train", "toy/train.jsonl")),
                      input_style="text", answer="text", metrics=("rouge", "reply_length_ratio"), max_new_tokens=5,
                      budget_reason="a drug name", headline="rougeL", default_shots=1, input_name="Question")

DRIVER = """
import runpy, sys
sys.path.insert(0, {here!r})
from test_declared_task_and_metric import METRIC, toy_task
from bioinstruct_jax.eval import metric_registry, tasks
metric_registry.METRICS[METRIC.name] = METRIC
tasks.TASKS["toy_drugs"] = toy_task()
sys.argv[0] = "bioinstruct_jax.eval"
runpy.run_module("bioinstruct_jax.eval", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    from hf_fixtures import write_tiny_llama
    from bioinstruct_jax.data.tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("declared")
    (root / "data" / "toy").mkdir(parents=True)
    (root / "data" / "toy" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ITEMS[:5]))
    (root / "data" / "toy" / "train.jsonl").write_text(json.dumps(ITEMS[5]) + "\n")
    write_tiny_llama(root / "hf", vocab_size=300)
    sp = train_sentencepiece([f"{r['input']} {r['output']}" for r in ITEMS] * 4, 300, root / "tok")
    driver = root / "driver.py"
    driver.write_text(DRIVER.format(here=str(pathlib.Path(__file__).parent)))
    proc = subprocess.run([sys.executable, str(driver), "--model", str(root / "hf"), "--predictor-arg",
                           f"tokenizer={sp}", "--tasks", "toy_drugs", "--data-dir", str(root / "data"),
                           "--out", str(root / "out")], env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc.stdout


def test_the_new_task_runs_and_the_new_metric_is_computed_and_printed(eval_run):
    root, stdout = eval_run
    entry = json.loads((root / "out" / "results.json").read_text())["tasks"]["toy_drugs"]
    recs = [json.loads(x) for x in (root / "out" / "toy_drugs.predictions.jsonl").read_text().splitlines()]
    assert entry["n"] == 5 and entry["shots"] == 1 and len(recs) == 5
    assert all("Question:\n" + ITEMS[5]["input"] in r["prompt"] for r in recs)  # the one-shot from train.jsonl
    want = 100.0 * sum(len(r["pred"] or "") for r in recs) / sum(len(r["gold"]) for r in recs)
    assert entry["metrics"]["reply_length_ratio"] == pytest.approx(want)
    assert list(entry["metrics"]) == ["rouge1", "rouge2", "rougeL", "reply_length_ratio"]
    row = next(line.split() for line in stdout.splitlines() if "reply_length_ratio" in line)
    assert row == ["reply_length_ratio", f"{want:.2f}", "-"]  # its own row under the headline, no paper value


def test_the_new_metric_is_bootstrapped_as_a_corpus_ratio(eval_run, tmp_path, monkeypatch):
    root, _ = eval_run
    monkeypatch.setitem(metric_registry.METRICS, METRIC.name, METRIC)
    before = [json.loads(x) for x in (root / "out" / "toy_drugs.predictions.jsonl").read_text().splitlines()]
    after = [{**r, "pred": r["gold"][: 3 + i]} for i, r in enumerate(before)]  # known replies
    (tmp_path / "toy_drugs.predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in after))
    rows = compare.compare([(toy_task(), ["reply_length_ratio"])], root / "out", tmp_path, n_boot=200, seed=3)
    # by hand: the ratio of sums on each resample of the same items (a mean of per-item ratios differs)
    idx = np.random.default_rng(3).integers(0, 5, size=(200, 5))
    gold = np.array([len(r["gold"]) for r in before], float)
    b_len = np.array([len(r["pred"] or "") for r in before], float)
    a_len = np.array([len(r["pred"]) for r in after], float)
    boot_b = 100 * b_len[idx].sum(1) / gold[idx].sum(1)
    boot_a = 100 * a_len[idx].sum(1) / gold[idx].sum(1)
    (r,) = rows
    assert r.after.value == pytest.approx(100 * a_len.sum() / gold.sum())
    assert [r.after.lo, r.after.hi] == pytest.approx(np.percentile(boot_a, [2.5, 97.5]))
    assert [r.delta.lo, r.delta.hi] == pytest.approx(np.percentile(boot_a - boot_b, [2.5, 97.5]))
    assert "reply_length_ratio" in compare.format_table(rows)


def test_records_are_frozen_and_variants_are_new_records():
    medqa = tasks.get_task("medqa")
    with pytest.raises(AttributeError):
        medqa.headline = "f1"
    subset = medqa.seeded_subset(2, seed=0)
    assert subset is not medqa and subset.test is not medqa.test and tasks.get_task("medqa") is medqa
    with pytest.raises(ValueError, match="answer 'letters'"):
        tasks.Task("x", tasks.QA, "i", test=medqa.test, train=None, input_style="question", answer="letters",
                   metrics=("accuracy",), max_new_tokens=1, budget_reason="", headline="accuracy", default_shots=0)


def test_families_sharing_a_key_must_agree_on_its_averaging():
    clash = {**metric_registry.METRICS, "f1_mean": metric_registry.Metric("f1_mean", ("f1",), None, metric_registry.MEAN)}
    with pytest.raises(ValueError, match="'f1'"):
        metric_registry._by_key(clash)
