"""Evaluation metrics. All scores are percentages (0-100) so they sit beside the paper's numbers.

A prediction of None is a parse failure: wrong for accuracy, a missed answer (a false negative,
not a false positive) for P/R/F1.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Sequence

from bioinstruct_jax.eval.parsing import normalize_text


def _pct(num: float, den: float) -> float:
    return 100.0 * num / den if den else 0.0


def _prf(tp: float, fp: float, fn: float) -> dict[str, float]:
    p = _pct(tp, tp + fp)
    r = _pct(tp, tp + fn)
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


def accuracy(preds: Sequence[Any], golds: Sequence[Any]) -> float:
    if len(preds) != len(golds):
        raise ValueError(f"accuracy: {len(preds)} predictions vs {len(golds)} golds")
    return _pct(sum(p is not None and p == g for p, g in zip(preds, golds)), len(golds))


def entity_prf(preds: Sequence[Iterable[str] | None], golds: Sequence[Iterable[str]]) -> dict[str, float]:
    """Micro entity-level P/R/F1: per example, sets of normalised mention strings
    (case-insensitive, punctuation/whitespace runs collapsed); a None prediction is an empty set."""
    if len(preds) != len(golds):
        raise ValueError(f"entity_prf: {len(preds)} predictions vs {len(golds)} golds")
    tp = fp = fn = 0
    for p, g in zip(preds, golds):
        ps = {normalize_text(x) for x in (p or [])} - {""}
        gs = {normalize_text(x) for x in g} - {""}
        tp += len(ps & gs)
        fp += len(ps - gs)
        fn += len(gs - ps)
    return _prf(tp, fp, fn)


def micro_prf_labels(preds: Sequence[str | None], golds: Sequence[str],
                     ignore: Iterable[str] = ()) -> dict[str, float]:
    """Micro P/R/F1 over single-label predictions (ChemProt relation types).

    A correct label is a TP; a wrong label is a FP (for the predicted class) and a FN (for the
    gold one); a parse failure only a FN. Labels in `ignore` (a "no relation" class) are never
    counted as positives."""
    ignore = set(ignore)
    tp = fp = fn = 0
    for p, g in zip(preds, golds, strict=True):
        if p is not None and p == g:
            if g not in ignore:
                tp += 1
            continue
        if p is not None and p not in ignore:
            fp += 1
        if g not in ignore:
            fn += 1
    return _prf(tp, fp, fn)


def rouge(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (rouge-score, Porter stemming)."""
    from rouge_score import rouge_scorer  # costly (nltk, about a second): only text tasks score ROUGE

    if len(preds) != len(refs):
        raise ValueError(f"rouge: {len(preds)} predictions vs {len(refs)} references")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    tot = collections.Counter()
    for p, r in zip(preds, refs):
        for k, s in scorer.score(r, p or "").items():
            tot[k] += s.fmeasure
    n = len(preds)
    return {k: _pct(tot[k], n) for k in ("rouge1", "rouge2", "rougeL")}


def bleu(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, 4-grams, exponential smoothing off)."""
    import sacrebleu  # costly: only text tasks score BLEU

    if len(preds) != len(refs):
        raise ValueError(f"bleu: {len(preds)} predictions vs {len(refs)} references")
    return float(sacrebleu.corpus_bleu([p or "" for p in preds], [list(refs)]).score)


def token_prf(preds: Sequence[str | None], golds: Sequence[str]) -> dict[str, float]:
    """Micro token-level P/R/F1 of predicted spans against gold spans (normalised word tokens,
    bag-of-words overlap); the coreference metric."""
    tp = fp = fn = 0
    for p, g in zip(preds, golds, strict=True):
        pc = collections.Counter(normalize_text(p or "").split())
        gc = collections.Counter(normalize_text(g).split())
        common = sum((pc & gc).values())
        tp += common
        fp += sum(pc.values()) - common
        fn += sum(gc.values()) - common
    return _prf(tp, fp, fn)


def medication_status_scores(preds: Sequence[Sequence[tuple[str, str]] | None],
                             golds: Sequence[Sequence[tuple[str, str]]]) -> dict[str, float]:
    """Medication extraction P/R/F1 (on normalised names, status ignored), conditional accuracy
    (status accuracy over medications both extracted and in the gold list), and F1 of the
    (name, status) pairs."""
    tp = fp = fn = 0
    ptp = pfp = pfn = 0
    cond_ok = cond_n = 0
    for p, g in zip(preds, golds, strict=True):
        pm = {normalize_text(n): s for n, s in (p or [])}
        gm = {normalize_text(n): s for n, s in g}
        pm.pop("", None)
        common = pm.keys() & gm.keys()
        tp += len(common)
        fp += len(pm.keys() - gm.keys())
        fn += len(gm.keys() - pm.keys())
        cond_n += len(common)
        cond_ok += sum(pm[k] == gm[k] for k in common)
        pp, gp = set(pm.items()), set(gm.items())
        ptp += len(pp & gp)
        pfp += len(pp - gp)
        pfn += len(gp - pp)
    out = _prf(tp, fp, fn)
    out["conditional_accuracy"] = _pct(cond_ok, cond_n)
    out["pair_f1"] = _prf(ptp, pfp, pfn)["f1"]
    return out


def exact_match(preds: Sequence[str | None], golds: Sequence[str]) -> float:
    """Accuracy after `normalize_text` on both sides."""
    return accuracy([None if p is None else normalize_text(p) for p in preds],
                    [normalize_text(g) for g in golds])
