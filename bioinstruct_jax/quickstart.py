"""`python -m bioinstruct_jax.quickstart`: the embedded default main job (the command; the code is in jobs/quickstart.py)."""

import sys

from bioinstruct_jax.cli.errors import run
from bioinstruct_jax.jobs.quickstart import main

if __name__ == "__main__":
    sys.exit(run(main))
