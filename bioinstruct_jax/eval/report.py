"""The printed results table: our headline number per task beside the paper's."""

from __future__ import annotations

import math
from typing import Any

from bioinstruct_jax.eval import paper_results


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.2f}" if isinstance(v, (int, float)) else str(v)


def format_table(results: dict[str, Any]) -> str:
    """One row per task: metric, ours, the paper's (for the matched model), n, parse failures."""
    model = results.get("meta", {}).get("paper_model")
    paper_col = f"paper ({model})" if model else "paper (no matching model)"
    rows = [("task", "metric", "ours", paper_col, "n", "parse fail %")]
    for name, e in results.get("tasks", {}).items():
        m = e.get("metrics", {})
        key = e.get("headline", "")
        paper_key = paper_results.PAPER_METRIC.get(name, (None,))[0]
        paper = e.get("paper") if key == paper_key else None
        rows.append((name, key, _fmt(m.get(key)), _fmt(paper), str(e.get("n", "")),
                     _fmt(e.get("parse_failure_rate"))))
        if "loglik_accuracy" in m and key != "loglik_accuracy":
            rows.append(("", "loglik_accuracy", _fmt(m["loglik_accuracy"]), "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
