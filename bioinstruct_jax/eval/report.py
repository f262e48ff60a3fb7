"""The printed results tables: our headline number per task beside the paper's, the optional
free-text metrics (BERTScore, concept F1) under their task, and the per-group (QA / IE / GEN)
averages beside the paper's; under them, for every choice task, the baselines on the same items and
the answer distribution of each way it was answered (generation, log-likelihood)."""

from __future__ import annotations

import math
from typing import Any

from bioinstruct_jax.eval import metric_registry, paper_results
from bioinstruct_jax.eval.diagnostics import format_baselines, format_distribution


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else str(v)


def results_table(results: dict[str, Any]) -> str:
    """One row per task: metric, ours, the paper's (for the matched model), n, parse failures."""
    model = results.get("meta", {}).get("paper_model")
    paper_col = f"paper ({model})" if model else "paper (no matching model)"
    rows = [("task", "metric", "ours", paper_col, "n", "parse fail %")]
    for name, e in results.get("tasks", {}).items():
        m = e.get("metrics", {})
        key = e.get("headline", "")
        paper_key = paper_results.PAPER_METRIC.get(name, (None,))[0]
        paper = e.get("paper") if key == paper_key else None
        rows.append((name, key, _fmt(m.get(key), metric_registry.digits(key)), _fmt(paper), str(e.get("n", "")),
                     _fmt(e.get("parse_failure_rate"))))
        for extra, paper_cell in metric_registry.report_rows():  # the metrics printed under the headline
            if extra in m and extra != key:
                rows.append(("", extra, _fmt(m[extra], metric_registry.digits(extra)), paper_cell, "", ""))
    text = grid(rows)
    groups = group_rows(results.get("tasks", {}), model)
    if groups:
        text += "\n\n" + grid([("group", "metric", "ours", paper_col, "tasks")]
                                + [(g, metric, _fmt(ours), _fmt(paper), tasks)
                                   for g, metric, ours, paper, tasks in groups])
    notes = diagnostics_lines(results.get("tasks", {}))
    if notes:
        text += "\n\n" + "\n".join(notes)
    return text


DIAGNOSTIC_NAMES = {"generate": "generation", "loglik": "log-likelihood", "loglik_norm": "log-likelihood, length-normalised"}


def diagnostics_lines(tasks: dict[str, Any]) -> list[str]:
    """Per choice task: its baselines on the same items, then per answer kind the accuracy,
    balanced accuracy, macro-F1, unreadable replies and the answer distribution."""
    out = []
    for name, e in tasks.items():
        diags = e.get("diagnostics") or {}
        if not diags:
            continue
        first = next(iter(diags.values()))
        style = f", prompt style {e['prompt_style']}" if e.get("prompt_style") else ""
        out.append(f"{name} (n={first['n']}{style}): baselines on the same items: {format_baselines(first)}; "
                   f"gold {format_distribution(first['gold'])}")
        for kind, d in diags.items():
            out.append(f"  {DIAGNOSTIC_NAMES.get(kind, kind)}: accuracy {d['accuracy']:.1f}, balanced accuracy "
                       f"{d['balanced_accuracy']:.1f}, macro-F1 {d['macro_f1']:.1f}, unreadable {d['unreadable']}; "
                       f"answers {format_distribution(d['predicted'])}")
    return out


def grid(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def our_group_average(tasks: dict[str, Any], group: str) -> tuple[str, float, list[str]] | None:
    """(metric, mean, tasks averaged) of one group over the tasks present: the paper's metric for
    the group when any task has it, else the first fallback metric present; None when no task."""
    names = [t for t in paper_results.GROUPS[group] if t in tasks]
    for metric in (paper_results.GROUP_METRIC[group],) + paper_results.GROUP_FALLBACK[group]:
        vals = [(t, tasks[t].get("metrics", {}).get(metric)) for t in names]
        vals = [(t, v) for t, v in vals if isinstance(v, (int, float)) and not math.isnan(v)]
        if vals:
            return metric, sum(v for _, v in vals) / len(vals), [t for t, _ in vals]
    return None


def group_rows(tasks: dict[str, Any], model: str | None) -> list[tuple[str, str, float, float | None, str]]:
    """(group, metric, ours, the paper's mean over the same tasks or None, "k/n") per group present."""
    out = []
    for g, members in paper_results.GROUPS.items():
        got = our_group_average(tasks, g)
        if got is None:
            continue
        metric, ours, used = got
        paper = None
        if metric == paper_results.GROUP_METRIC[g]:
            vals = [paper_results.paper_value(model, t) for t in used]
            paper = sum(vals) / len(vals) if vals and all(v is not None for v in vals) else None
        out.append((g, metric, ours, paper, f"{len(used)}/{len(members)}"))
    return out
