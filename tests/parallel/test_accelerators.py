"""parallel/accelerators.py: the one table of accelerator figures, read by typed names and by the
device_kind strings JAX reports; the planner (memory) and training's MFU (peak FLOP/s) both use it."""

from __future__ import annotations

import pytest

from bioinstruct_jax.parallel import accelerators
from bioinstruct_jax.train import metrics, plan


@pytest.mark.parametrize("name,canon", [
    ("v3-8", "tpu-v3"), ("tpu-v4-8", "tpu-v4"), ("v5litepod-8", "tpu-v5e"), ("tpu-v5p-8", "tpu-v5p"),
    ("TPU v5 lite", "tpu-v5e"), ("TPU v5", "tpu-v5p"), ("TPU v6 lite", "tpu-v6e"), ("TPU v2", "tpu-v2"),
    ("A100-80", "a100-80"), ("a100", "a100-40"), ("NVIDIA A100-SXM4-80GB", "a100-80"),
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"), ("NVIDIA L4", "l4"),
    ("Tesla V100-SXM2-32GB", "v100-32"),
])
def test_names_and_device_kinds(name, canon):
    assert accelerators.canonical_name(name) == canon


@pytest.mark.parametrize("name", ["tpu-v9", "cpu", "NVIDIA L40S"])
def test_unknown_names(name):
    assert accelerators.canonical_name(name) is None


def test_planner_and_mfu_read_the_same_table():
    for name, figures in accelerators.ACCELERATORS.items():
        assert plan.accelerator_bytes(name) == (name, figures.memory_bytes)
        assert metrics.peak_flops_per_device(name) == (name, figures.peak_flops)
    with pytest.raises(ValueError, match="no peak FLOP/s known"):
        metrics.peak_flops_per_device("tpu-v9")
