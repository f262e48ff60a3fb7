"""`python -m bioinstruct_jax.generate`: generate text from a pretrained model or a training run (the command; the code is in infer/cli.py)."""

import sys

from bioinstruct_jax.cli.errors import run
from bioinstruct_jax.infer.cli import main

if __name__ == "__main__":
    sys.exit(run(main))
