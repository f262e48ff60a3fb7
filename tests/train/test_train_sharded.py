"""The same run on an fsdp x tensor mesh of 8 virtual CPU devices matches the 1-device losses."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from bioinstruct_jax.train import loop as train  # noqa: E402
from bioinstruct_jax.config import load_run_config  # noqa: E402
from bioinstruct_jax.train.metrics import read_metrics  # noqa: E402
from train_helpers import tiny_overrides, write_task  # noqa: E402


def _losses(tmp_path, name, mesh, tok, train_file, val_file):
    cfg = load_run_config(None, tiny_overrides(
        tmp_path / name, train_file, val_file,
        **{"train.steps": 12, "train.save_every": 0, "model.vocab_size": 64, "optim.warmup_steps": 2,
           "mesh.data": mesh[0], "mesh.fsdp": mesh[1], "mesh.tensor": mesh[2], "train.eval_every": 6}))
    result = train.run(cfg, tokenizer=tok, verbose=False)
    records = read_metrics(tmp_path / name / "metrics.jsonl")
    assert result.step == 12
    return ([r["loss"] for r in records if r["split"] == "train"],
            [r["loss"] for r in records if r["split"] == "val"], result)


def test_fsdp_by_tensor_mesh_matches_one_device(tmp_path):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS for 8 virtual CPU devices)")
    train_file, val_file, tok = write_task(tmp_path / "data")
    one_train, one_val, _ = _losses(tmp_path, "one", (1, 1, 1), tok, train_file, val_file)
    many_train, many_val, result = _losses(tmp_path, "many", (2, 2, 2), tok, train_file, val_file)
    # the parameters really are split over fsdp and tensor
    kernel = result.model.layers[0].self_attn.q_proj.kernel[...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert len(kernel.sharding.device_set) == 8
    np.testing.assert_allclose(many_train, one_train, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(many_val, one_val, rtol=2e-4, atol=2e-5)
    assert one_train[-1] < one_train[0]
