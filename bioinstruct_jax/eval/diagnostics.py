"""What a choice-task accuracy means on its items: baselines, answer distribution, class balance.

`answer_diagnostics(preds, golds, labels)` returns, on the same items:
- `baselines`: `majority` (always the most frequent gold answer of these items: an upper bound
  of any constant answer, computed with the gold labels) and `always` (accuracy of always
  answering X, for every X in the task's labels);
- `predicted` / `gold`: the answer distribution of the predictions (with `unreadable`, replies
  the parser could not read, which count as wrong) and of the gold answers;
- `accuracy`, `balanced_accuracy` (mean recall over the gold classes present; a constant answer
  scores 100 / k) and `macro_f1` (mean F1 over the gold classes present; unreadable replies are
  wrong predictions of no class), all in percent.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Hashable, Sequence

UNREADABLE = "unreadable"


def _pct(num: float, den: float) -> float:
    return 100.0 * num / den if den else float("nan")


def answer_diagnostics(preds: Sequence[Hashable | None], golds: Sequence[Hashable],
                       labels: Sequence[Hashable] | None = None) -> dict[str, Any]:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold answers")
    n = len(golds)
    gold_count = Counter(golds)
    order = list(dict.fromkeys([*(labels or ()), *sorted(gold_count, key=str)]))
    classes = [c for c in order if gold_count[c]]
    pred_count = Counter(UNREADABLE if p is None else p for p in preds)
    correct = sum(p == g for p, g in zip(preds, golds))
    recalls, f1s = [], []
    for c in classes:
        tp = sum(p == c and g == c for p, g in zip(preds, golds))
        n_pred = sum(p == c for p in preds)
        recall = tp / gold_count[c]
        precision = tp / n_pred if n_pred else 0.0
        recalls.append(recall)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    majority = max(order, key=lambda c: gold_count[c]) if order else None  # first in label order on ties
    return {
        "n": n,
        "accuracy": _pct(correct, n),
        "balanced_accuracy": 100.0 * sum(recalls) / len(recalls) if recalls else float("nan"),
        "macro_f1": 100.0 * sum(f1s) / len(f1s) if f1s else float("nan"),
        "unreadable": pred_count.get(UNREADABLE, 0),
        "predicted": {str(c): pred_count.get(c, 0) for c in order}
                     | ({UNREADABLE: pred_count[UNREADABLE]} if pred_count.get(UNREADABLE) else {})
                     | {str(c): k for c, k in pred_count.items() if c not in order and c != UNREADABLE},
        "gold": {str(c): gold_count.get(c, 0) for c in order},
        "baselines": {
            "majority": {"answer": None if majority is None else str(majority),
                         "accuracy": _pct(gold_count.get(majority, 0), n)},
            "always": {str(c): _pct(gold_count.get(c, 0), n) for c in order},
        },
    }


def format_distribution(counts: dict[str, int]) -> str:
    """"A 10, B 3, unreadable 2" (zero counts kept, so two sides line up)."""
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def format_baselines(diag: dict[str, Any]) -> str:
    """"majority (yes) 55.5; always yes 55.5, no 30.0, maybe 14.5"."""
    b = diag["baselines"]
    always = ", ".join(f"{k} {v:.1f}" for k, v in b["always"].items())
    return f"majority ({b['majority']['answer']}) {b['majority']['accuracy']:.1f}; always {always}"
