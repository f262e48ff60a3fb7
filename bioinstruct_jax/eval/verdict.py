"""The mini reproduction's preregistered decision rule (docs/RESULTS.md, "Mini reproduction,
preregistered"), applied to comparison rows that carry diagnostics (`compare.Row`).

Per endpoint, in order: `uninformative at this scale` (both sides' 95% intervals reach the
majority-class baseline or lie below it); `direction reproduced` (the delta's interval is above 0
and balanced accuracy rose; with balanced accuracy flat or down it is `inconclusive (prior
shift)`); `not reproduced` (the delta's interval lies below the smallest effect of interest);
`inconclusive` (anything else). Overall: the common verdict of all endpoints, else `mixed`.
"""

from __future__ import annotations

from typing import Any, Sequence

SMALLEST_EFFECT = 3.0  # accuracy points, about half the paper's LLaMA-2-7B gains
UNINFORMATIVE = "uninformative at this scale"
REPRODUCED = "direction reproduced"
PRIOR_SHIFT = "inconclusive (prior shift)"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"


def endpoint_verdict(row: Any, smallest_effect: float = SMALLEST_EFFECT) -> tuple[str, str]:
    """(verdict, the numbers it rests on) for one accuracy row with `diagnostics`."""
    if not row.diagnostics:
        raise ValueError(f"{row.task} {row.metric}: no diagnostics (baselines) to judge chance against")
    before, after = row.diagnostics["before"], row.diagnostics["after"]
    majority = before["baselines"]["majority"]["accuracy"]
    d_bal = after["balanced_accuracy"] - before["balanced_accuracy"]
    why = (f"before {row.before.fmt()}, after {row.after.fmt()}, delta {row.delta.fmt(signed=True)}, "
           f"majority baseline {majority:.1f}, balanced-accuracy delta {d_bal:+.1f}")
    if row.before.lo <= majority and row.after.lo <= majority:
        return UNINFORMATIVE, why
    if row.delta.lo > 0:
        return (REPRODUCED if d_bal > 0 else PRIOR_SHIFT), why
    if row.delta.hi < smallest_effect:
        return NOT_REPRODUCED, why
    return INCONCLUSIVE, why


def overall_verdict(verdicts: Sequence[str]) -> str:
    """`reproduced` / `not reproduced` / `uninformative at this scale` when every endpoint agrees
    (direction reproduced / not reproduced / uninformative), else `mixed`."""
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return "reproduced"
    if verdicts and all(v == NOT_REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    if verdicts and all(v == UNINFORMATIVE for v in verdicts):
        return UNINFORMATIVE
    return "mixed"
