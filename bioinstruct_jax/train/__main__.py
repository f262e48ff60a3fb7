"""`python -m bioinstruct_jax.train`: LoRA instruction tuning from a YAML config (the command; the code is in train/loop.py)."""

import sys

from bioinstruct_jax.cli.errors import run
from bioinstruct_jax.train.loop import main

if __name__ == "__main__":
    sys.exit(run(main))
