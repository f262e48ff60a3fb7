"""Console-script names of the commands (`[project.scripts]` in pyproject.toml).

`bioinstruct-train ARGS` is `python -m bioinstruct_jax.train ARGS`, and so on: each entry runs
the command's module as `__main__` (by name, through `runpy`, so this early stage imports no later
one), with the same flags, output and exit codes.
"""

from __future__ import annotations

import runpy
import sys
from typing import Callable

COMMANDS = {
    "train": "bioinstruct_jax.train",
    "plan": "bioinstruct_jax.plan",
    "generate": "bioinstruct_jax.generate",
    "evaluate": "bioinstruct_jax.eval",
    "export": "bioinstruct_jax.export",
    "describe": "bioinstruct_jax.checkpoint.describe",
    "quickstart": "bioinstruct_jax.quickstart",
}


def _entry(name: str) -> Callable[[], None]:
    """The console-script function of command `name`: runs its module as `__main__`."""
    module = COMMANDS[name]

    def run() -> None:
        sys.argv[0] = f"python -m {module}"
        runpy.run_module(module, run_name="__main__", alter_sys=True)

    run.__name__ = run.__qualname__ = name
    return run


train = _entry("train")
plan = _entry("plan")
generate = _entry("generate")
evaluate = _entry("evaluate")
export = _entry("export")
describe = _entry("describe")
quickstart = _entry("quickstart")

__all__ = ["COMMANDS", *COMMANDS]
