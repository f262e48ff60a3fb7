"""The error every checkpoint reader raises for a file that does not fit the model (its own module,
so the HF and GGUF readers share it without importing each other)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that does not match the model: names the tensor, file and shapes."""
