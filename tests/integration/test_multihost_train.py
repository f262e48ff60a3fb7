"""The training CLI as 2 processes x 2 CPU devices (gloo, 127.0.0.1) against 1 process x 4 devices.

One uninterrupted two-process run is the reference for: per-step training and validation losses
equal to the single-process run's on the same global records; run-directory files written by
process 0 alone; its checkpoint restoring on one host (what export does). A second two-process run
is SIGKILLed, rerun and SIGTERMed on one process only (both save the same step and exit 0), rerun
again, and must reach the reference's LoRA weights bit for bit.
"""

from __future__ import annotations

import json
import pathlib
import signal
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/: the helper modules
import multihost_cli as mh  # noqa: E402

STEPS = 16


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The data, and the finished 2-process reference run (its directory and logs)."""
    import jax

    if not hasattr(jax.config, "jax_cpu_collectives_implementation"):
        pytest.skip("this jax build has no CPU collectives option (jax_cpu_collectives_implementation)")
    root = tmp_path_factory.mktemp("multihost_train")
    data = mh.write_data(root / "data")
    ref = root / "ref"
    procs = mh.launch(mh.overrides(data, ref, **{"train.steps": STEPS}), root / "ref_logs", processes=2, devices=2)
    mh.wait(procs, root / "ref_logs")
    for i, p in enumerate(procs):
        text = mh.output(root / "ref_logs", i)
        if p.returncode and "gloo" in text.lower() and ("not available" in text.lower() or "unsupported" in text.lower()):
            pytest.skip(f"this jax build has no gloo CPU collectives: {text.strip().splitlines()[-1]}")
        assert p.returncode == 0, f"process {i}:\n{text[-4000:]}"
    return {"root": root, "data": data, "ref": ref, "logs": root / "ref_logs"}


def test_two_processes_equal_one_process_and_only_process_0_logs(runs):
    root, data, ref = runs["root"], runs["data"], runs["ref"]
    single = root / "single"
    procs = mh.launch(mh.overrides(data, single, **{"train.steps": STEPS}), root / "single_logs", processes=1,
                      devices=4)
    mh.wait(procs, root / "single_logs")
    assert procs[0].returncode == 0, mh.output(root / "single_logs", 0)[-4000:]

    got, want = mh.losses(ref), mh.losses(single)
    assert set(want) == {("train", s) for s in range(1, STEPS + 1)} | {("val", s) for s in (6, 12, 16)}
    assert set(got) == set(want)
    for key in sorted(want):
        assert abs(got[key] - want[key]) <= 1e-5, (key, got[key], want[key])
    assert len({round(v, 3) for k, v in want.items() if k[0] == "train"}) > STEPS // 2  # the loss moves

    # process 0 alone wrote the logs: one TensorBoard file, each metric once, one summary line
    assert sorted(p.name for p in ref.iterdir()) == ["checkpoints", "loss_curve.png", "metrics.jsonl",
                                                     "run_config.yaml", "tensorboard"]
    assert len(list((ref / "tensorboard").iterdir())) == 1
    lines = (ref / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(want) == len({(json.loads(x)["split"], json.loads(x)["step"]) for x in lines})
    out0, out1 = mh.output(runs["logs"], 0), mh.output(runs["logs"], 1)
    assert f'"step": {STEPS}, "preempted": false' in out0
    assert '"preempted"' not in out1 and "train:" not in out1 and "validation loss" not in out1
    # every process saved its own data-iterator state
    assert sorted(p.name for p in (ref / "checkpoints" / str(STEPS) / "data").glob("*.json")) == [
        "process_0-of-2.json", "process_1-of-2.json"]

    # the two-process checkpoint restores on one host, one device (the export path)
    from bioinstruct_jax.checkpoint.restore import restore_run
    from bioinstruct_jax.model.lora import LoRAParam
    from flax import nnx
    import jax

    run = restore_run(str(ref))
    model, cfg, tok = run.model, run.config, run.tokenizer
    assert cfg.train.steps == STEPS and tok == str(data["tokenizer"])
    loaded = sorted(np.asarray(v.get_value()).tobytes() for _, v in nnx.to_flat_state(nnx.state(model, LoRAParam)))
    saved = sorted(x.tobytes() for x in mh.final_lora(ref, STEPS).values())
    assert loaded == saved and jax.process_count() == 1


def test_killed_and_preempted_two_process_run_resumes_bitwise(runs):
    root, data, ref = runs["root"], runs["data"], runs["ref"]
    out = root / "interrupted"
    args = mh.overrides(data, out, **{"train.steps": STEPS})

    # 1. both processes SIGKILLed once step 4 is checkpointed
    logs = root / "killed_logs"
    procs = mh.launch(args, logs, processes=2, devices=2)
    mh.wait_for_checkpoint(out, 4, procs, logs)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait(timeout=60)
    assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2
    assert not (out / "checkpoints" / str(STEPS)).exists(), "the run ended before it was killed"

    # 2. rerun; SIGTERM to process 1 only: both save the same step and exit 0
    logs = root / "preempted_logs"
    procs = mh.launch(args, logs, processes=2, devices=2)
    mh.wait_for_checkpoint(out, 8, procs, logs)
    procs[1].send_signal(signal.SIGTERM)
    mh.wait(procs, logs)
    assert [p.returncode for p in procs] == [0, 0], mh.output(logs, 0)[-3000:] + mh.output(logs, 1)[-3000:]
    result = json.loads(mh.output(logs, 0).strip().splitlines()[-1])
    assert result["preempted"] and 8 <= result["step"] < STEPS, result
    saved = out / "checkpoints" / str(result["step"])
    assert sorted(p.name for p in (saved / "data").glob("*.json")) == ["process_0-of-2.json", "process_1-of-2.json"]

    # 3. rerun to the end: the LoRA weights and every loss equal the uninterrupted run's
    logs = root / "resumed_logs"
    procs = mh.launch(args, logs, processes=2, devices=2)
    mh.wait(procs, logs)
    assert [p.returncode for p in procs] == [0, 0], mh.output(logs, 0)[-3000:] + mh.output(logs, 1)[-3000:]
    want, got = mh.final_lora(ref, STEPS), mh.final_lora(out, STEPS)
    assert list(want) == list(got) and len(want) > 0
    for name in want:
        assert np.array_equal(want[name], got[name]), name
    ref_losses, got_losses = mh.losses(ref), mh.losses(out)
    assert all(got_losses[k] == v for k, v in ref_losses.items() if k[0] == "train")
