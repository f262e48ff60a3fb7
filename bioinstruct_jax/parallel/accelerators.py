"""Accelerator datasheet figures: memory and dense bf16 peak FLOP/s per JAX device, by name.

One JAX device is one TensorCore on TPU v2/v3, one chip from v4 on (v4 and v5p chips are one
"megacore" device each), and one GPU. `canonical_name` reads the names people type ('v3-8',
'tpu-v4', 'A100-80', 'h100') and the `device_kind` strings JAX reports ('TPU v5 lite',
'NVIDIA H100 80GB HBM3'). The memory planner compares its per-device bytes with `memory_bytes`;
training's MFU and the benchmark divide by `peak_flops`.
"""

from __future__ import annotations

import dataclasses
import re

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """Per JAX device: memory (bytes) and dense bf16 peak (FLOP/s), from the datasheets."""

    memory_bytes: float
    peak_flops: float


ACCELERATORS: dict[str, Accelerator] = {
    "tpu-v2": Accelerator(8 * GiB, 22.5e12),      # per core
    "tpu-v3": Accelerator(16 * GiB, 61.5e12),     # per core (123 TFLOP/s per chip)
    "tpu-v4": Accelerator(32 * GiB, 275e12),      # per chip (megacore)
    "tpu-v5e": Accelerator(16 * GiB, 197e12),
    "tpu-v5p": Accelerator(95 * GiB, 459e12),
    "tpu-v6e": Accelerator(32 * GiB, 918e12),
    "a100-40": Accelerator(40 * GiB, 312e12),
    "a100-80": Accelerator(80 * GiB, 312e12),
    "h100": Accelerator(80 * GiB, 989e12),
    "h200": Accelerator(141 * GiB, 989e12),
    "l4": Accelerator(24 * GiB, 121e12),
    "a10": Accelerator(24 * GiB, 125e12),
    "v100": Accelerator(16 * GiB, 125e12),
    "v100-32": Accelerator(32 * GiB, 125e12),
}

# Short names people type for a TPU generation or a GPU board.
_ALIASES = {"v2": "tpu-v2", "v3": "tpu-v3", "v4": "tpu-v4", "v5e": "tpu-v5e", "v5litepod": "tpu-v5e",
            "v5p": "tpu-v5p", "v6e": "tpu-v6e", "a100": "a100-40", "a100-40gb": "a100-40",
            "a100-80gb": "a100-80", "h100-80": "h100", "h100-80gb": "h100"}

# device_kind strings (lower case), first match wins: 'TPU v5 lite' is a v5e, 'TPU v5' a v5p.
_KIND_PATTERNS = (
    (r"v6", "tpu-v6e"), (r"v5 ?(lite|e\b)", "tpu-v5e"), (r"v5", "tpu-v5p"), (r"v4", "tpu-v4"),
    (r"v3", "tpu-v3"), (r"v2", "tpu-v2"), (r"a100.*80", "a100-80"), (r"a100", "a100-40"),
    (r"h200", "h200"), (r"h100", "h100"), (r"\bl4\b", "l4"), (r"\ba10", "a10"),
    (r"v100.*32", "v100-32"), (r"v100", "v100"),
)


def canonical_name(name: str) -> str | None:
    """The `ACCELERATORS` key for a typed name or a JAX device_kind; None when unknown."""
    key = name.strip().lower()
    if key in ACCELERATORS:
        return key
    short = re.sub(r"^(tpu-)?(v\d+[a-z]*)(-\d+)?$", r"\2", key)  # 'tpu-v3-8' / 'v4-8' -> 'v3' / 'v4'
    short = _ALIASES.get(short, short)
    if short in ACCELERATORS:
        return short
    return next((canon for pattern, canon in _KIND_PATTERNS if re.search(pattern, key)), None)


def lookup(name: str) -> tuple[str, Accelerator]:
    """(canonical name, figures); ValueError naming the known accelerators when unknown."""
    canon = canonical_name(name)
    if canon is None:
        raise ValueError(f"unknown accelerator {name!r}; known: {', '.join(ACCELERATORS)}")
    return canon, ACCELERATORS[canon]


__all__ = ["GiB", "Accelerator", "ACCELERATORS", "canonical_name", "lookup"]
