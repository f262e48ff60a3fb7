"""Prompts cut to fit the context, counted so that a command can say so once, with figures.

`CutTally` adds up, over one command, how many items were seen, how many lost tokens, how many
tokens they lost and the largest single cut; `note(...)` is the one line the command prints (None
when nothing was cut). `keep_end(ids, budget)` is the cut generation and scoring make: the
beginning of the prompt goes, its end (the question, the response header) stays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


def keep_end(ids: Sequence[int], budget: int) -> tuple[list[int], int]:
    """(the last `budget` ids, how many were dropped from the beginning)."""
    ids = list(ids)
    budget = max(int(budget), 0)
    if len(ids) <= budget:
        return ids, 0
    return ids[len(ids) - budget:], len(ids) - budget


@dataclasses.dataclass
class CutTally:
    """Counts of one command's cuts (see the module docstring)."""

    items: int = 0
    cut: int = 0
    tokens: int = 0
    largest: int = 0

    def add(self, dropped: int) -> None:
        self.items += 1
        if dropped > 0:
            self.cut += 1
            self.tokens += int(dropped)
            self.largest = max(self.largest, int(dropped))

    def note(self, what: str, where: str, why: str) -> str | None:
        """`note: C of N WHAT were cut to fit WHY: T tokens dropped from WHERE (at most L from one)`."""
        if not self.cut:
            return None
        return (f"note: {self.cut} of {self.items} {what} {'was' if self.cut == 1 else 'were'} cut to fit {why}: "
                f"{self.tokens:,} tokens dropped from {where} (at most {self.largest:,} from one)")


__all__ = ["CutTally", "keep_end"]
