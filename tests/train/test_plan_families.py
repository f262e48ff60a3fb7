"""The memory planner on a Qwen2 checkpoint folder: its q/k/v biases are counted and placed like
every other frozen parameter (compiled on a 4 x 2 mesh of virtual devices)."""

from __future__ import annotations

import json

import jax
import pytest

from bioinstruct_jax.model.config import LlamaConfig
from bioinstruct_jax.train import plan as planner

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (virtual) devices; see tests/conftest.py")


def test_plan_of_a_qwen2_folder_counts_its_biases(tmp_path):
    cfg = LlamaConfig.preset("tiny-qwen2")
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf()))  # the planner reads the config only
    settings = planner.PlanSettings(hf_path=str(tmp_path), mesh=(1, 4, 2), batch=8, seq=32, lora_r=8,
                                    targets=("q_proj", "v_proj"), accelerator="tpu-v3", dtype="float32")
    result = planner.plan(settings)
    d, hd = cfg.hidden_size, cfg.resolved_head_dim
    lora = 8 * cfg.num_hidden_layers * ((d + cfg.num_attention_heads * hd) + (d + cfg.num_key_value_heads * hd))
    biases = cfg.num_hidden_layers * hd * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads)
    assert result.trainable_params == lora
    assert result.total_params == cfg.num_params() + lora
    assert cfg.num_params() - biases == LlamaConfig.preset("tiny").num_params() - cfg.vocab_size * d  # + tied head
    assert result.fits and result.params_bytes > 0
