"""Before/after comparison of two evaluations on the same items: paired bootstrap intervals,
the printed table, `comparison.json` and a PNG of the scores beside the training loss curve.

Input: two eval output folders written by `eval.runner` (`<task>.predictions.jsonl`). Items are
matched by id, so "before" and "after" are scored on exactly the same examples. Each score comes
with n and a percentile bootstrap 95% interval (items resampled with replacement, `n_boot` times);
the delta's interval resamples the same items on both sides (paired). Metrics that are a mean over
items (`metric_registry`: average MEAN, e.g. accuracy, ROUGE, exact match) are bootstrapped from
per-item values; corpus metrics (BLEU, micro F1) are recomputed on each resample by their family.

Given the task data (`data=`), stored generations are parsed again with the current parser on
both sides, so a comparison never mixes two parser versions. Accuracy rows of choice tasks carry
`diagnostics` (eval/diagnostics.py: majority and always-X baselines on the same items, each side's
answer distribution, balanced accuracy, macro-F1, unreadable replies), printed under the table.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any, Sequence

import numpy as np

from bioinstruct_jax.data.journal import write_json_atomic
from bioinstruct_jax.eval import metric_registry, runner
from bioinstruct_jax.eval.diagnostics import answer_diagnostics, format_baselines, format_distribution
from bioinstruct_jax.eval.tasks import DataSource, Task
from bioinstruct_jax.train.metrics import read_metrics

@dataclasses.dataclass(frozen=True)
class Score:
    value: float
    lo: float
    hi: float

    def fmt(self, signed: bool = False, digits: int = 1) -> str:
        if math.isnan(self.value):
            return "-"
        f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
        return f"{f.format(self.value)} [{f.format(self.lo)}, {f.format(self.hi)}]"


@dataclasses.dataclass(frozen=True)
class Row:
    """One task x metric: before, after and after - before, each with its 95% interval."""

    task: str
    category: str
    metric: str
    n: int
    before: Score
    after: Score
    delta: Score
    paper_delta: float | None = None
    label: str = ""  # what was scored, when one task has several rows of a metric (e.g. "lm-eval")
    diagnostics: dict[str, Any] | None = None  # {"before": ..., "after": ...} for choice accuracies

    def as_dict(self) -> dict[str, Any]:
        d = {"task": self.task, "category": self.category, "metric": self.metric, "n": self.n}
        if self.label:
            d["label"] = self.label
        for k in ("before", "after", "delta"):
            s = getattr(self, k)
            d[k] = {"value": s.value, "ci95": [s.lo, s.hi]}
        d["paper_delta"] = self.paper_delta
        if self.diagnostics is not None:
            d["diagnostics"] = self.diagnostics
        return d


def reparse(task: Task, records: Sequence[dict[str, Any]], examples: dict[str, Any]) -> list[dict[str, Any]]:
    """Copies of `records` whose `pred` is read again from the stored `generation` by the task's
    current parser (records of items not in `examples`, or without a generation, unchanged)."""
    out = []
    for r in records:
        ex = examples.get(str(r["id"]))
        if ex is not None and "generation" in r:
            r = {**r, "pred": task.parse(r["generation"] or "", ex)}
        out.append(r)
    return out


def _diagnostics(task: Task, before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]],
                 metric: str) -> dict[str, Any] | None:
    key = metric_registry.answer_field(metric)
    if task.kind != "choice" or key is None or key not in before[0]:
        return None
    golds = [r["gold"] for r in before]
    labels = before[0].get("choices") or getattr(task, "labels", None) or sorted({str(g) for g in golds})
    return {side: answer_diagnostics([r.get(key) for r in recs], golds, labels)
            for side, recs in (("before", before), ("after", after))}


def _matched(task: Task, before_dir: pathlib.Path, after_dir: pathlib.Path, data: DataSource | None = None
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    b = runner.read_predictions(before_dir / f"{task.name}.predictions.jsonl")
    a = runner.read_predictions(after_dir / f"{task.name}.predictions.jsonl")
    ids = [i for i in b if i in a]
    if not ids:
        raise ValueError(f"task {task.name}: no item scored both in {before_dir} and in {after_dir}")
    before, after = [b[i] for i in ids], [a[i] for i in ids]
    if data is not None:
        examples = {str(e.id): e for e in task.load(data)}
        before, after = reparse(task, before, examples), reparse(task, after, examples)
    return before, after


def paired_bootstrap(task: Task, before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]],
                     metric: str, n_boot: int = 1000, seed: int = 0) -> tuple[Score, Score, Score]:
    """(before, after, delta) of `metric` with percentile 95% intervals over item resamples."""
    n = len(before)
    if n != len(after):
        raise ValueError(f"task {task.name}: {n} items before vs {len(after)} after")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    score = metric_registry.key_scorer(task.metrics, metric)  # only the family giving `metric`
    full_b, full_a = float(score(list(before))), float(score(list(after)))
    if metric_registry.is_mean(metric):
        per_b = np.array([score([r]) for r in before], dtype=np.float64)
        per_a = np.array([score([r]) for r in after], dtype=np.float64)
        boot_b, boot_a = per_b[idx].mean(axis=1), per_a[idx].mean(axis=1)
    else:
        boot_b = np.array([score([before[j] for j in row]) for row in idx], dtype=np.float64)
        boot_a = np.array([score([after[j] for j in row]) for row in idx], dtype=np.float64)

    def ci(full: float, boot: np.ndarray) -> Score:
        lo, hi = np.nanpercentile(boot, [2.5, 97.5]) if np.isfinite(boot).any() else (math.nan, math.nan)
        return Score(full, float(lo), float(hi))

    return ci(full_b, boot_b), ci(full_a, boot_a), ci(full_a - full_b, boot_a - boot_b)


def compare(tasks: Sequence[tuple[Task, Sequence[str]]], before_dir: str | pathlib.Path,
            after_dir: str | pathlib.Path, *, paper_deltas: dict[tuple[str, str], float] | None = None,
            n_boot: int = 1000, seed: int = 0, data: DataSource | None = None, label: str = "") -> list[Row]:
    """Rows for each (task, metrics) pair, read from the two eval folders. `data`: the task data,
    to parse stored generations again with the current parser (see `reparse`)."""
    rows = []
    for task, metric_names in tasks:
        before, after = _matched(task, pathlib.Path(before_dir), pathlib.Path(after_dir), data)
        for m in metric_names:
            b, a, d = paired_bootstrap(task, before, after, m, n_boot=n_boot, seed=seed)
            rows.append(Row(task.name, task.category, m, len(before), b, a, d,
                            (paper_deltas or {}).get((task.name, m)), label=label,
                            diagnostics=_diagnostics(task, before, after, m)))
    return rows


CATEGORY_TITLES = {"qa": "Table 1 - question answering (zero-shot)",
                   "ie": "Table 2 - information extraction (one-shot)",
                   "gen": "Table 3 - text generation (one-shot)",
                   "user": "held-out instructions"}


def format_table(rows: Sequence[Row], *, paper_column: bool = False) -> str:
    """Rows grouped by category (the paper's Tables 1-3 order), scores as `value [lo, hi]`."""
    labelled = any(r.label for r in rows)
    head = ["task", *(["scored as"] if labelled else []), "metric", "n", "before", "after", "delta (95% CI)"]
    if paper_column:
        head.append("paper delta (LLaMA-2-7B)")
    out: list[str] = []
    for cat in ("qa", "ie", "gen", "user"):
        group = [r for r in rows if r.category == cat]
        if not group:
            continue
        body = []
        for r in group:
            d = metric_registry.ci_digits(r.metric)
            line = [r.task, *([r.label or "-"] if labelled else []), r.metric, str(r.n), r.before.fmt(digits=d),
                    r.after.fmt(digits=d), r.delta.fmt(signed=True, digits=d)]
            if paper_column:
                line.append("-" if r.paper_delta is None else f"{r.paper_delta:+.2f}")
            body.append(line)
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
        out.append(CATEGORY_TITLES.get(cat, cat))
        out.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
        out.append("  ".join("-" * w for w in widths))
        out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in body]
        notes = [format_diagnostics(r) for r in group if r.diagnostics]
        if notes:
            out.append("")
            out += notes
        out.append("")
    return "\n".join(out).rstrip()


def format_diagnostics(row: Row) -> str:
    """The lines under a table for one choice-accuracy row: baselines on its items, then each
    side's balanced accuracy, macro-F1, unreadable replies and answer distribution."""
    b, a = row.diagnostics["before"], row.diagnostics["after"]
    name = f"{row.task} {row.label + ' ' if row.label else ''}{row.metric} (n={row.n})"
    lines = [f"{name}: baselines on the same items: {format_baselines(b)}"]
    for side, d in (("before", b), ("after", a)):
        lines.append(f"  {side:6}: balanced acc {d['balanced_accuracy']:.1f}, macro-F1 {d['macro_f1']:.1f}, "
                     f"unreadable {d['unreadable']}; answers {format_distribution(d['predicted'])}")
    lines.append(f"  gold  : {format_distribution(b['gold'])}")
    return "\n".join(lines)


def write_comparison_json(rows: Sequence[Row], path: str | pathlib.Path, meta: dict[str, Any] | None = None) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": {**(meta or {}), "interval": "percentile bootstrap 95%, paired over the same items"},
           "rows": [r.as_dict() for r in rows]}
    write_json_atomic(path, doc, indent=1, sort_keys=False)
    return path


def plot(rows: Sequence[Row], png: str | pathlib.Path, metrics_jsonl: str | pathlib.Path | None = None,
         title: str = "") -> pathlib.Path:
    """Left: before/after bars with 95% intervals per task-metric; right: the training loss curve."""
    import matplotlib  # costly (about a second): only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = pathlib.Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [max(2, len(rows)), 3]})
    x = np.arange(len(rows))
    for off, side, color in ((-0.2, "before", "#9aa5b1"), (0.2, "after", "#1f77b4")):
        vals = [getattr(r, side) for r in rows]
        err = np.array([[max(0.0, s.value - s.lo) for s in vals], [max(0.0, s.hi - s.value) for s in vals]])
        ax.bar(x + off, [s.value for s in vals], 0.4, yerr=np.nan_to_num(err), capsize=3, color=color,
               label="untuned" if side == "before" else "LoRA-tuned")
    ax.set_xticks(x, [f"{r.task}{' ' + r.label if r.label else ''}\n{r.metric} (n={r.n})" for r in rows], fontsize=7)
    ax.set_ylabel("score (%; bars: 95% bootstrap CI)")
    ax.legend(fontsize=8)
    ax.set_title("before / after on the same held-out items", fontsize=10)
    points = read_metrics(metrics_jsonl) if metrics_jsonl and pathlib.Path(metrics_jsonl).exists() else []
    for split, style in (("train", "-"), ("val", "o--")):
        pts = [(p["step"], p["loss"]) for p in points if p.get("split") == split and "loss" in p]
        if pts:
            ax2.plot(*zip(*pts), style, label=f"{split} loss")
    ax2.set_xlabel("step")
    ax2.set_ylabel("loss")
    ax2.set_title("training loss", fontsize=10)
    if points:
        ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
