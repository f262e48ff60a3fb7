"""Command-line parsing shared by the CLIs: `ArgumentParser`, whose usage errors are one line, and
`type=` functions for numeric flags with a range, so a bad value (`--max-new-tokens -1`) is refused
by argparse itself: `PROG: error: argument --max-new-tokens: must be an integer >= 1, got -1`,
exit code 2.

One name per concept across the commands (`--out` for what a command writes, `--adapter` for a
LoRA / PEFT adapter or a training run's LoRA, `--batch-size`, `--max-length`, `--teacher-model` for
an API model); a name a command used before stays accepted as a hidden alias (`add_alias`).
"""

from __future__ import annotations

import argparse
import math
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a usage error is one line (argparse prints the whole usage first,
    dozens of lines for our CLIs, which buries the error), and an option may have hidden aliases."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._aliases: dict[str, str] = {}

    def add_alias(self, old: str, new: str) -> None:
        """Accept option `old` as `new` (an earlier name of the same flag), without listing it in
        --help: the command line is rewritten before parsing (`--old V` and `--old=V` alike)."""
        if not any(new in action.option_strings for action in self._actions):
            raise ValueError(f"alias {old} names {new}, which this parser does not have")
        self._aliases[old] = new

    def _with_new_names(self, args: list[str]) -> list[str]:
        out = []
        for i, arg in enumerate(args):
            if arg == "--":  # everything after it is positional
                return out + args[i:]
            name, eq, value = arg.partition("=")
            out.append(self._aliases[name] + eq + value if name in self._aliases else arg)
        return out

    def parse_known_args(self, args=None, namespace=None):
        if self._aliases:
            args = self._with_new_names(list(sys.argv[1:] if args is None else args))
        return super().parse_known_args(args, namespace)

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
