"""The memory planner on a tiny model: positive per-device figures and a verdict that follows capacity."""

from __future__ import annotations

import jax
import pytest

from bioinstruct_jax import plan as planner
from bioinstruct_jax.model.llama import LlamaConfig

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (virtual) devices; see tests/conftest.py")


def test_tiny_plan_numbers_and_verdict_flip():
    settings = planner.PlanSettings(preset="tiny", mesh=(1, 4, 2), batch=8, seq=32, lora_r=8,
                                    accelerator="tpu-v3", dtype="float32")
    big = planner.plan(settings)
    for name in ("params_bytes", "lora_bytes", "optimizer_bytes", "batch_bytes", "temp_bytes", "peak_bytes"):
        assert getattr(big, name) > 0, name
    cfg = LlamaConfig.preset("tiny")
    # f32 base weights: every 2-D weight is split 8 ways (fsdp 4 x tensor 2), norms replicated
    norms = (2 * cfg.num_hidden_layers + 1) * cfg.hidden_size
    assert big.params_bytes == 4 * ((cfg.num_params() - norms) // 8 + norms)
    assert big.optimizer_bytes >= 2 * big.lora_bytes  # AdamW mu and nu
    assert big.peak_bytes >= big.params_bytes + big.lora_bytes + big.optimizer_bytes + big.temp_bytes
    assert big.fits and "FITS" in big.report()
    small = planner.plan(planner.PlanSettings(**{**settings.__dict__, "accelerator": "0.0005GiB"}))
    assert small.peak_bytes == big.peak_bytes
    assert not small.fits and "DOES NOT FIT" in small.report()


def test_accelerator_names():
    assert planner.accelerator_bytes("v3-8") == ("tpu-v3", 16 * 2**30)
    assert planner.accelerator_bytes("tpu-v4-8")[1] == 32 * 2**30
    assert planner.accelerator_bytes("A100-80")[1] == 80 * 2**30
    assert planner.accelerator_bytes("h100")[1] == 80 * 2**30
    with pytest.raises(ValueError, match="unknown accelerator 'tpu-v9'"):
        planner.accelerator_bytes("tpu-v9")


def test_settings_from_flags_and_run_config(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: {preset: llama2-13b, param_dtype: bfloat16, remat: true}\n"
        "lora: {r: 16, alpha: 32, targets: [q_proj, v_proj]}\n"
        "mesh: {data: 1, fsdp: -1, tensor: 2}\n"
        "data: {max_length: 1024}\n"
        "train: {global_batch_size: 16, accelerator: tpu-v4}\n"
    )
    settings, _ = planner.parse_args(["--config", str(config), "data.max_length=512", "--batch", "8"])
    assert settings == planner.PlanSettings(preset="llama2-13b", mesh=(1, 4, 2), batch=8, seq=512, lora_r=16,
                                            lora_alpha=32.0, targets=("q_proj", "v_proj"), remat=True,
                                            dtype="bfloat16", accelerator="tpu-v4")
    settings, _ = planner.parse_args(["--preset", "tiny", "--mesh", "2,-1,1", "--devices", "8", "--no-remat",
                                      "--targets", "q_proj,k_proj"])
    assert settings.mesh == (2, 4, 1) and settings.targets == ("q_proj", "k_proj") and not settings.remat
