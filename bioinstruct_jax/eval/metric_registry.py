"""The one table of evaluation metrics: how each is computed, averaged, bootstrapped and printed.

A `Metric` is a family of `results.json` keys computed together from a task's prediction records
(ROUGE gives rouge1 / rouge2 / rougeL in one pass). A task names the families it scores in its
record (`tasks.TASKS`); a user task `jsonl:PATH:NAME` may name any family marked `free_text`.
Everything else reads this table: `Task.score` computes the families, `compare` bootstraps a key
from per-item values (`MEAN`) or by recomputing its family on each resample (`CORPUS`), `report`
prints the keys a family lists in `rows` under the task's headline row, and the runner asks it
which tasks can be answered by log-likelihood. Adding a metric is one `Metric(...)` entry here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from bioinstruct_jax.eval import metrics, parsing

MEAN, CORPUS = "mean", "corpus"
Records = Sequence[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Metric:
    """One family of metric keys.

    compute: prediction records -> {key: value}; None when something else writes the keys (the
      GPT-4 judge, the optional text scorers), which then cannot be recomputed on a resample.
    average: MEAN (a mean over items: intervals resample per-item values) or CORPUS (recomputed
      on every resample: BLEU, micro F1).
    needs: a record field the first record must have for the family to be computed (choice tasks
      answer by `generation`, by `loglik`, or both).
    free_text: a user task `jsonl:PATH:NAME` may choose it; it then computes `user_metrics`
      (default: this family) and shows `headline`.
    rows: keys printed on their own row under the task's headline row, with `paper_cell` in the
      paper's column.
    answer_fields: per key, the record field holding the answer it scores (choice diagnostics).
    digits / ci_digits: decimals in the results table / in the comparison's intervals.
    scale: "%" (0-100, beside the paper's percentages) or "1-5" (the judge's rating).
    """

    name: str
    keys: tuple[str, ...]
    compute: Callable[[Records], dict[str, float]] | None
    average: str = CORPUS
    needs: str = ""
    free_text: bool = False
    user_metrics: tuple[str, ...] = ()
    headline: str = ""
    rows: tuple[str, ...] = ()
    paper_cell: str = "-"
    answer_fields: dict[str, str] = dataclasses.field(default_factory=dict)
    digits: int = 2
    ci_digits: int = 1
    scale: str = "%"


def _preds(recs: Records, field: str = "pred") -> list[Any]:
    return [r[field] for r in recs]


def _golds(recs: Records) -> list[Any]:
    return [r["gold"] for r in recs]


def _mentions(value: Any) -> Any:
    """A mention list as it is (entity tasks) or read from a reply text (user tasks)."""
    return value if isinstance(value, list) else parsing.parse_list(value or "")


def _medication(recs: Records) -> dict[str, float]:
    return metrics.medication_status_scores(
        [None if r["pred"] is None else [tuple(x) for x in r["pred"]] for r in recs],
        [[tuple(x) for x in r["gold"]] for r in recs])


def _loglik_accuracy(recs: Records) -> dict[str, float]:
    golds = _golds(recs)
    return {"loglik_accuracy": metrics.accuracy(_preds(recs, "loglik_pred"), golds),
            "loglik_accuracy_norm": metrics.accuracy(_preds(recs, "loglik_pred_norm"), golds)}


_PRF = ("precision", "recall", "f1")
_METRICS = (
    Metric("accuracy", ("accuracy",), lambda recs: {"accuracy": metrics.accuracy(_preds(recs), _golds(recs))},
           MEAN, needs="generation", answer_fields={"accuracy": "pred"}),
    Metric("label_f1", _PRF, lambda recs: metrics.micro_prf_labels(_preds(recs), _golds(recs)), needs="generation"),
    Metric("loglik_accuracy", ("loglik_accuracy", "loglik_accuracy_norm"), _loglik_accuracy, MEAN,
           needs="loglik", rows=("loglik_accuracy", "loglik_accuracy_norm"), paper_cell="",
           answer_fields={"loglik_accuracy": "loglik_pred", "loglik_accuracy_norm": "loglik_pred_norm"}),
    Metric("loglik_f1", ("loglik_f1",),
           lambda recs: {"loglik_f1": metrics.micro_prf_labels(_preds(recs, "loglik_pred"), _golds(recs))["f1"]},
           needs="loglik"),
    Metric("rouge", ("rouge1", "rouge2", "rougeL"),
           lambda recs: metrics.rouge([p or "" for p in _preds(recs)], _golds(recs)), MEAN,
           free_text=True, user_metrics=("rouge", "bleu"), headline="rougeL"),
    Metric("bleu", ("bleu",), lambda recs: {"bleu": metrics.bleu([p or "" for p in _preds(recs)], _golds(recs))},
           free_text=True, user_metrics=("rouge", "bleu"), headline="bleu"),
    Metric("exact_match", ("exact_match",),
           lambda recs: {"exact_match": metrics.exact_match(_preds(recs), _golds(recs))}, MEAN,
           free_text=True, headline="exact_match"),
    Metric("token_f1", _PRF, lambda recs: metrics.token_prf(_preds(recs), _golds(recs)), free_text=True,
           headline="f1"),
    Metric("entity_f1", _PRF, lambda recs: metrics.entity_prf([_mentions(p) for p in _preds(recs)],
                                                               [_mentions(g) or [] for g in _golds(recs)]),
           free_text=True, headline="f1"),
    Metric("medication", _PRF + ("conditional_accuracy", "pair_f1"), _medication),
    Metric("judge", ("judge_coherence", "judge_completeness", "judge_naturalness", "judge_mean"), None,
           scale="1-5"),  # eval.judge.aggregate
    Metric("bertscore", ("bertscore_precision", "bertscore_recall", "bertscore_f1"), None, MEAN,
           rows=("bertscore_f1",)),  # eval.bertscore, the paper reports it without numbers
    Metric("concept_f1", ("concept_f1", "concept_f1_macro"), None,
           rows=("concept_f1", "concept_f1_macro")),  # eval.concepts, likewise
)
METRICS: dict[str, Metric] = {m.name: m for m in _METRICS}


def _by_key(table: dict[str, Metric]) -> dict[str, Metric]:
    """key -> the first family producing it; families sharing a key must agree on how it is
    averaged and printed."""
    out: dict[str, Metric] = {}
    for m in table.values():
        for k in m.keys:
            first = out.setdefault(k, m)
            if (first.average, first.digits, first.ci_digits) != (m.average, m.digits, m.ci_digits):
                raise ValueError(f"metric key {k!r}: families {first.name!r} and {m.name!r} disagree")
    return out


def free_text_names() -> tuple[str, ...]:
    """The metrics a user task `jsonl:PATH:NAME` may choose, in table order."""
    return tuple(n for n, m in METRICS.items() if m.free_text)


def family(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name]


def score(families: Sequence[str], records: Records) -> dict[str, float]:
    """{key: value} of every family in `families` that the records can give, in that order."""
    out: dict[str, float] = {}
    for name in families:
        m = family(name)
        if m.compute is None or (m.needs and not (records and m.needs in records[0])):
            continue
        out.update(m.compute(records))
    return out


def key_scorer(families: Sequence[str], key: str) -> Callable[[Records], float]:
    """records -> the value of `key`, computing only the family (among `families`) that gives it."""
    for name in families:
        m = family(name)
        if key in m.keys and m.compute is not None:
            return lambda recs, _f=m.compute: _f(recs)[key]
    raise ValueError(f"metric {key!r} is not computed from predictions by any of {list(families)}")


def spec(key: str) -> Metric | None:
    """The family a results key belongs to (None for a key no family lists)."""
    return _by_key(METRICS).get(key)


def is_mean(key: str) -> bool:
    """Whether `key` is a mean over items (bootstrapped from per-item values)."""
    m = spec(key)
    return m is not None and m.average == MEAN


def answer_field(key: str) -> str | None:
    """The record field holding the answers `key` scores (None: not a choice accuracy)."""
    m = spec(key)
    return None if m is None else m.answer_fields.get(key)


def report_rows() -> tuple[tuple[str, str], ...]:
    """(key, paper column) of the keys printed on their own row under a task's headline."""
    return tuple((k, m.paper_cell) for m in METRICS.values() for k in m.rows)


def uses(families: Sequence[str], field: str) -> bool:
    """Whether any of `families` is computed from records that have `field` (e.g. "loglik")."""
    return any(family(n).needs == field for n in families)


def digits(key: str) -> int:
    m = spec(key)
    return 2 if m is None else m.digits


def ci_digits(key: str) -> int:
    m = spec(key)
    return 1 if m is None else m.ci_digits


_by_key(METRICS)  # refuse a table whose families disagree on a shared key
