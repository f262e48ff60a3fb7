"""Smoke test of scripts/benchmark.py: a --quick train + data run in a subprocess writes positive figures.

Not a timed test: nothing here asserts a speed, only that every figure is produced and positive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT


def test_quick_train_and_data(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the script runs on one device (it also strips the conftest flag itself)
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), "--quick", "--only", "train,data",
           "--preset", "tiny", "--json", str(out), "--workdir", str(tmp_path / "work")]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["machine"]["jax_devices"] == 1
    for key in ("jax_f32_gflops", "jax_bf16_gflops", "torch_f32_gflops"):
        assert res["peak"][key] > 0
    train = res["train"]
    assert train["dtype"] == "float32" and train["preset"] == "tiny"
    for key in ("ours_tokens_per_s", "theirs_tokens_per_s", "ours_mfu", "ratio_ours_over_theirs", "compile_s",
                "flops_per_token"):
        assert train[key] > 0, key
    assert train["ours_loss"] > 0 and train["theirs_loss"] > 0
    data = res["data"]
    assert data["rouge_instr_per_s"] > 0 and data["rouge_build_instr_per_s"] > 0
