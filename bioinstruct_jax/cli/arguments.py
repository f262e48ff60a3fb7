"""Command-line parsing shared by the CLIs: `ArgumentParser`, whose usage errors are one line, and
`type=` functions for numeric flags with a range, so a bad value (`--max-new-tokens -1`) is refused
by argparse itself: `PROG: error: argument --max-new-tokens: must be an integer >= 1, got -1`,
exit code 2.
"""

from __future__ import annotations

import argparse
import math


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a usage error is one line (argparse prints the whole usage first,
    dozens of lines for our CLIs, which buries the error)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _bounded(kind: type, low: float, *, strict: bool):
    """A `type=` function for numbers of `kind` that are >= low (> low when `strict`)."""
    noun = "an integer" if kind is int else "a number"
    rule = f"{'>' if strict else '>='} {low:g}"

    def parse(text: str):
        value = kind(_number(text, kind))
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {noun} {rule}, got {value:g}")
        return value

    return parse


positive_int = _bounded(int, 1, strict=False)  # an integer >= 1
non_negative_int = _bounded(int, 0, strict=False)  # an integer >= 0
non_negative_float = _bounded(float, 0, strict=False)  # a finite number >= 0
positive_float = _bounded(float, 0, strict=True)  # a finite number > 0


def unit_interval(text: str) -> float:
    """A number in (0, 1] (top-p, thresholds)."""
    value = float(_number(text, float))
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value:g}")
    return value
