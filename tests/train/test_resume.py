"""Resumption: SIGKILL after a checkpoint + restart == uninterrupted run (bitwise); SIGTERM saves and exits 0."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np

HELPER = pathlib.Path(__file__).resolve().parents[1] / "train_helpers.py"
REPO = HELPER.parents[1]
# LoRA dropout on, so the saved RNG state matters; 1 device for speed.
COMMON = ["train.steps=40", "train.save_every=10", "lora.dropout=0.1", "optim.lr=0.003", "train.keep_last=5"]


def _env():
    env = dict(os.environ, PYTHONPATH=f"{REPO}:{HELPER.parent}", JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    return env


def _start(data, out, delay):
    return subprocess.Popen([sys.executable, str(HELPER), str(data), str(out), str(delay), *COMMON],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(out: pathlib.Path, step: int, proc, timeout=120):
    """A step directory exists only once Orbax has finalised (renamed) it."""
    target = out / "checkpoints" / str(step)
    start = time.time()
    while not target.is_dir():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - start < timeout, f"no checkpoint {target} after {timeout}s"
        time.sleep(0.05)


def _final_lora(out: pathlib.Path, step: int):
    from bioinstruct_jax.checkpoint.orbax import RunCheckpointer
    import orbax.checkpoint as ocp

    ckpt = RunCheckpointer(str(out), read_only=True)
    restored = ckpt.manager.restore(step, args=ocp.args.Composite(lora=ocp.args.StandardRestore()))
    ckpt.close()
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(restored.lora)]


def _losses(out: pathlib.Path):
    from bioinstruct_jax.train.metrics import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"}


def test_sigkill_then_restart_is_bitwise_identical(tmp_path):
    data = tmp_path / "data"
    ref = _start(data, tmp_path / "ref", 0.0)
    out_ref = ref.communicate(timeout=300)[0]
    assert ref.returncode == 0, out_ref

    out = tmp_path / "killed"
    proc = _start(data, out, 0.15)
    _wait_for_checkpoint(out, 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "checkpoints" / "40").exists()
    again = _start(data, out, 0.0)
    text = again.communicate(timeout=300)[0]
    assert again.returncode == 0, text
    assert '"step": 40' in text

    ref_w, got_w = _final_lora(tmp_path / "ref", 40), _final_lora(out, 40)
    assert len(ref_w) == len(got_w) > 0
    for a, b in zip(ref_w, got_w):
        assert np.array_equal(a, b)
    ref_l, got_l = _losses(tmp_path / "ref"), _losses(out)
    assert set(ref_l) == set(got_l) == set(range(1, 41))
    assert all(ref_l[s] == got_l[s] for s in ref_l)


def test_sigterm_saves_a_final_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "term"
    proc = _start(tmp_path / "data", out, 0.15)
    _wait_for_checkpoint(out, 10, proc)
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, text
    result = json.loads(text.split("RESULT ", 1)[1].splitlines()[0])
    assert result["preempted"] and 10 <= result["step"] < 40
    assert (out / "checkpoints" / str(result["step"])).is_dir()
