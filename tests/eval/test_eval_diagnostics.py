"""Baselines, answer distribution, balanced accuracy and macro-F1 (eval/diagnostics.py) against a
hand-computed case and scikit-learn; the preregistered verdict rule (eval/verdict.py) on
constructed rows, one per branch."""

from __future__ import annotations

import random

import pytest

from bioinstruct_jax.eval.compare import Row, Score
from bioinstruct_jax.eval.diagnostics import answer_diagnostics, format_baselines
from bioinstruct_jax.eval import verdict as V


def test_hand_computed_case():
    golds = ["yes", "yes", "yes", "no", "no", "maybe"]
    preds = ["yes", "yes", None, "yes", "no", "no"]
    d = answer_diagnostics(preds, golds, ["yes", "no", "maybe"])
    assert d["n"] == 6 and d["unreadable"] == 1
    assert d["accuracy"] == pytest.approx(100 * 3 / 6)
    # recalls: yes 2/3, no 1/2, maybe 0/1 -> mean 7/18
    assert d["balanced_accuracy"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 0) / 3)
    # F1: yes P 2/3 R 2/3 -> 2/3; no P 1/2 R 1/2 -> 1/2; maybe 0 -> mean 7/18
    assert d["macro_f1"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 0) / 3)
    assert d["predicted"] == {"yes": 3, "no": 2, "maybe": 0, "unreadable": 1}
    assert d["gold"] == {"yes": 3, "no": 2, "maybe": 1}
    assert d["baselines"]["majority"] == {"answer": "yes", "accuracy": pytest.approx(50.0)}
    assert d["baselines"]["always"] == {"yes": 50.0, "no": pytest.approx(100 / 3), "maybe": pytest.approx(100 / 6)}
    assert format_baselines(d) == "majority (yes) 50.0; always yes 50.0, no 33.3, maybe 16.7"


def test_constant_answer_has_balanced_accuracy_one_over_k():
    golds = list("AABBBCCCCD")
    d = answer_diagnostics(["C"] * 10, golds, list("ABCD"))
    assert d["accuracy"] == pytest.approx(40.0) == d["baselines"]["majority"]["accuracy"]
    assert d["balanced_accuracy"] == pytest.approx(25.0)


def test_against_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn comes with the lm-eval test extra")
    rng = random.Random(0)
    golds = [rng.choice("ABCD") for _ in range(300)]
    preds = [rng.choice(["A", "A", "B", "C", "D", None]) for _ in range(300)]
    d = answer_diagnostics(preds, golds, list("ABCD"))
    p = ["unreadable" if x is None else x for x in preds]
    assert d["balanced_accuracy"] == pytest.approx(100 * metrics.balanced_accuracy_score(golds, p))
    assert d["macro_f1"] == pytest.approx(100 * metrics.f1_score(golds, p, labels=list("ABCD"), average="macro",
                                                                  zero_division=0))
    assert d["accuracy"] == pytest.approx(100 * metrics.accuracy_score(golds, p))


def _row(before, after, delta, majority=50.0, bal=(40.0, 45.0)):
    diag = {side: {"baselines": {"majority": {"accuracy": majority}}, "balanced_accuracy": b}
            for side, b in zip(("before", "after"), bal)}
    return Row("medqa", "qa", "loglik_accuracy", 600, Score(*before), Score(*after), Score(*delta),
               diagnostics=diag)


@pytest.mark.parametrize("row,want", [
    (_row((45, 41, 49), (48, 44, 52), (3, -1, 7)), V.UNINFORMATIVE),  # both intervals reach the baseline
    (_row((55, 51, 59), (62, 58, 66), (7, 2, 12)), V.REPRODUCED),
    (_row((55, 51, 59), (62, 58, 66), (7, 2, 12), bal=(40.0, 38.0)), V.PRIOR_SHIFT),
    (_row((55, 51, 59), (54, 50.5, 58), (-1, -4, 2.5)), V.NOT_REPRODUCED),  # interval below +3
    (_row((55, 51, 59), (57, 53, 61), (2, -2, 6)), V.INCONCLUSIVE),
])
def test_verdict_branches(row, want):
    assert V.endpoint_verdict(row)[0] == want


def test_overall_verdict():
    assert V.overall_verdict([V.REPRODUCED, V.REPRODUCED]) == "reproduced"
    assert V.overall_verdict([V.NOT_REPRODUCED] * 2) == V.NOT_REPRODUCED
    assert V.overall_verdict([V.UNINFORMATIVE] * 2) == V.UNINFORMATIVE
    assert V.overall_verdict([V.REPRODUCED, V.INCONCLUSIVE]) == "mixed"
