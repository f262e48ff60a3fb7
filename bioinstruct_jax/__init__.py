"""BioInstruct in JAX: LoRA instruction tuning of LLaMA models, data generation, evaluation, export."""

from bioinstruct_jax.parallel import platforms as _platforms

_platforms.keep_libtpu_away()  # before anything imports jax (see platforms.py)
