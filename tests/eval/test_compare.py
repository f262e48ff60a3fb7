"""Before/after comparison (`eval.compare`): paired bootstrap intervals and the table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bioinstruct_jax.eval import compare, metrics
from bioinstruct_jax.eval.tasks import get_task


def _records(preds, golds):
    return [{"id": str(i), "pred": p, "gold": g} for i, (p, g) in enumerate(zip(preds, golds))]


GOLDS = [f"what is the dose of drug {i} for children" for i in range(30)]
GOOD = [f"what is the dose of drug {i} for kids" for i in range(30)]
BAD = ["tell me about it"] * 15 + GOOD[15:]


def test_identical_sides_give_a_zero_delta_with_a_zero_width_interval():
    task = get_task("jsonl:x.jsonl:rouge")
    recs = _records(GOOD, GOLDS)
    for metric in ("rougeL", "bleu"):
        b, a, d = compare.paired_bootstrap(task, recs, recs, metric, n_boot=200)
        assert b == a and d.value == 0.0 and d.lo == 0.0 and d.hi == 0.0  # paired: same items both sides


def test_values_are_the_task_scores_and_intervals_bracket_them():
    task = get_task("jsonl:x.jsonl:rouge")
    before, after = _records(BAD, GOLDS), _records(GOOD, GOLDS)
    b, a, d = compare.paired_bootstrap(task, before, after, "rougeL", n_boot=500)
    assert b.value == pytest.approx(metrics.rouge(BAD, GOLDS)["rougeL"])
    assert a.value == pytest.approx(metrics.rouge(GOOD, GOLDS)["rougeL"])
    assert d.value == pytest.approx(a.value - b.value) and d.value > 0
    for s in (b, a, d):
        assert s.lo - 1e-9 <= s.value <= s.hi + 1e-9
    assert 0 < d.lo  # half the items improved a lot, none got worse: the interval excludes 0
    # the per-item mean shortcut and the corpus recomputation agree for a mean metric
    idx = np.random.default_rng(0).integers(0, 30, size=(3, 30))
    for row in idx:
        sub = [after[j] for j in row]
        per = np.mean([task.score([r])["rougeL"] for r in sub])
        assert per == pytest.approx(task.score(sub)["rougeL"])


def test_compare_matches_items_by_id_and_writes_table_and_json(tmp_path):
    task = get_task("jsonl:held.jsonl:rouge")
    for side, preds in (("before", BAD), ("after", GOOD)):
        d = tmp_path / side
        d.mkdir()
        recs = _records(preds, GOLDS)
        if side == "after":
            recs = recs[::-1] + [{"id": "extra", "pred": "x", "gold": "y"}]  # order and extras do not matter
        (d / f"{task.name}.predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rows = compare.compare([(task, ("rougeL", "bleu"))], tmp_path / "before", tmp_path / "after", n_boot=100)
    assert [(r.metric, r.n) for r in rows] == [("rougeL", 30), ("bleu", 30)]
    assert rows[0].after.value == pytest.approx(metrics.rouge(GOOD, GOLDS)["rougeL"])
    table = compare.format_table(rows, paper_column=True)
    assert "user_held" in table and "delta (95% CI)" in table and "paper delta" in table
    doc = json.loads(compare.write_comparison_json(rows, tmp_path / "c.json").read_text())
    assert doc["rows"][0]["delta"]["ci95"][0] <= doc["rows"][0]["delta"]["value"]
    png = compare.plot(rows, tmp_path / "c.png")
    assert png.stat().st_size > 0
