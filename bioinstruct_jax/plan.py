"""`python -m bioinstruct_jax.plan`: the memory planner (the command; the code is in train/plan.py)."""

import sys

from bioinstruct_jax.cli.errors import run
from bioinstruct_jax.train.plan import main

if __name__ == "__main__":
    sys.exit(run(main))
