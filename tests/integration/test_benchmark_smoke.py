"""Smoke test of scripts/benchmark.py: a --quick train + data run in a subprocess writes positive figures,
and the two training loops it times compute the same loss on the same batch.

Not a timed test: nothing here asserts a speed, only that every figure is produced and positive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bioinstruct_jax.checkpoint.hf import load_pretrained
from conftest import REPO_ROOT
from gguf_fixtures import write_tiny_gguf


def test_quick_train_and_data(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the script runs on one device (it also strips the conftest flag itself)
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), "--quick", "--only", "bandwidth,train,data",
           "--preset", "tiny", "--json", str(out), "--workdir", str(tmp_path / "work"),
           "--markdown", str(tmp_path / "headline.md")]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["machine"]["jax_devices"] == 1
    # every run names its machine: CPU, cores, the ISA flags that pick matmul kernels, bandwidth
    machine = res["machine"]
    assert machine["cores"] == os.cpu_count() and machine["copy_bandwidth_gbs"] > 0
    assert set(machine["isa"]) >= {"avx512f", "avx512_bf16", "amx_bf16"}
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    assert machine["isa"]["avx512f"] == ("avx512f" in flags) and machine["isa"]["amx_bf16"] == ("amx_bf16" in flags)
    assert res["train"]["machine"] == machine["label"] and machine["cpu"] in machine["label"]
    for key in ("jax_f32_gflops", "jax_bf16_gflops", "torch_f32_gflops"):
        assert res["peak"][key] > 0
    train = res["train"]
    assert train["dtype"] == "float32" and train["preset"] == "tiny"
    for key in ("ours_tokens_per_s", "theirs_tokens_per_s", "ours_mfu", "ratio_ours_over_theirs", "compile_s",
                "flops_per_token"):
        assert train[key] > 0, key
    # Same model, same batch, same loss: the first step's loss is the base model's in both (LoRA B = 0).
    # Afterwards the adapters differ only by their random A (our init vs peft's), so the losses after
    # a few 1e-4 AdamW steps stay close. Measured (CPU, f32): first losses 6.239340 both; after 4 steps
    # 6.236910 vs 6.236508 (0.0004 apart, 0.0024 below the first): tolerances 1e-5 and 1.2e-3 (3x).
    assert train["ours_first_loss"] == pytest.approx(train["theirs_first_loss"], abs=1e-5)
    assert train["ours_loss"] == pytest.approx(train["theirs_loss"], abs=1.2e-3)
    assert train["ours_loss"] != train["ours_first_loss"]  # the steps did train
    assert train["ratio_stats"]["n"] == 3 and train["ratio_stats"]["min"] <= train["ratio_stats"]["median"] \
        <= train["ratio_stats"]["max"]
    assert res["bandwidth"]["bandwidth_gbs"] >= res["bandwidth"]["numpy_copy_gbs"] > 0
    for section in ("peak", "bandwidth", "train", "data"):  # load recorded around every section
        load = res["load"][section]
        assert len(load["load_before"]) == 3 and len(load["load_after"]) == 3 and load["foreign_cores"] >= 0
        assert isinstance(load["idle"], bool)
    headline = (tmp_path / "headline.md").read_text()
    assert "| ours tok/s | transformers+peft tok/s | ratio |" in headline and "Memory bandwidth" in headline
    assert f"Machine: **{machine['label']}**" in headline
    if not res["idle"]:  # a loaded run says so, in the table and on stderr/stdout
        assert "Not idle during" in headline and "WARNING: the machine was not idle" in proc.stdout
    data = res["data"]
    assert data["rouge_instr_per_s"] > 0 and data["rouge_build_instr_per_s"] > 0


def _bench(tmp_path, name: str, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), "--quick", *args, "--json", str(out),
           "--workdir", str(tmp_path / f"work-{name}")]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow  # two benchmark processes, each converting the GGUF and compiling both sides: ~40 s
def test_model_flag_benchmarks_the_given_gguf_on_both_sides(tmp_path):
    """`--model FILE.gguf`: both sides load the file's weights (converted once by transformers' GGUF
    loader), and so do the memory section's fresh processes, also when it runs alone. Caught: a
    section that falls back to the random preset (the memory section did, unless a train or
    generate section had converted the file into its work folder first)."""
    gguf_file = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf_file, qtype="Q8_0")
    params = load_pretrained(gguf_file)[0].config.num_params()
    train = _bench(tmp_path, "train", "--only", "train", "--model", str(gguf_file), "--seq", "32")["train"]
    assert train["preset"] == str(gguf_file) and train["params"] == params
    # the same weights on both sides: the first step's loss (LoRA B = 0) is the base model's in both
    assert train["ours_first_loss"] == pytest.approx(train["theirs_first_loss"], abs=1e-5)
    memory = _bench(tmp_path, "memory", "--only", "memory", "--model", str(gguf_file), "--seq", "32")["memory"]
    assert memory["model"] == str(gguf_file)
    assert "error" not in memory["train"], memory["train"]["error"]
    assert memory["train"]["params"] == params  # the fresh process trained this model, not the preset
    assert memory["train"]["peak_rss_bytes"] >= memory["train"]["rss_after_load_bytes"] > 0
    # the folder the fresh processes loaded holds this model in f32 (4 bytes a parameter, tied head)
    assert memory["model_f32_bytes"] == pytest.approx(4 * params, rel=0.01)
