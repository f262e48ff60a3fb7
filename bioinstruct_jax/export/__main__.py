"""`python -m bioinstruct_jax.export`: a training run to Hugging Face format, merged or as a PEFT adapter (the command; the code is in export/merged.py)."""

import sys

from bioinstruct_jax.cli.errors import run
from bioinstruct_jax.export.merged import main

if __name__ == "__main__":
    sys.exit(run(main))
