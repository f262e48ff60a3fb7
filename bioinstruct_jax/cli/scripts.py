"""Console-script names of the commands (`[project.scripts]` in pyproject.toml).

`bioinstruct-train ARGS` is `python -m bioinstruct_jax.train ARGS`, and so on: each entry runs
the command's module as `__main__` (by name, through `runpy`, so this early stage imports no later
one), with the same flags, output and exit codes.
"""

from __future__ import annotations

import runpy
import sys

COMMANDS = {
    "train": "bioinstruct_jax.train",
    "plan": "bioinstruct_jax.plan",
    "generate": "bioinstruct_jax.generate",
    "evaluate": "bioinstruct_jax.eval",
    "export": "bioinstruct_jax.export",
    "describe": "bioinstruct_jax.checkpoint.describe",
    "quickstart": "bioinstruct_jax.quickstart",
}


def _run(module: str) -> None:
    sys.argv[0] = f"python -m {module}"
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def train() -> None:
    _run(COMMANDS["train"])


def plan() -> None:
    _run(COMMANDS["plan"])


def generate() -> None:
    _run(COMMANDS["generate"])


def evaluate() -> None:
    _run(COMMANDS["evaluate"])


def export() -> None:
    _run(COMMANDS["export"])


def describe() -> None:
    _run(COMMANDS["describe"])


def quickstart() -> None:
    _run(COMMANDS["quickstart"])


__all__ = ["COMMANDS", "train", "plan", "generate", "evaluate", "export", "describe", "quickstart"]
