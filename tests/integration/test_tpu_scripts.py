"""The TPU and GPU launch scripts, run for real with `gcloud` replaced by a stub that records its
arguments (no cloud, no TPU): runtime, zone, workers and remote commands for each TPU type of
scripts/tpu/env.sh, the bucket rule for pod slices and Spot TPUs, autocheckpoint, and the GPU
launcher's attention default."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import stat
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TPU = REPO / "scripts" / "tpu"

STUB = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""

# type -> (runtime, zone, workers): what Google's TPU docs give for each
TYPES = {
    "v3-8": ("tpu-ubuntu2204-base", "europe-west4-a", 1),
    "v4-8": ("tpu-ubuntu2204-base", "us-central2-b", 1),
    "v5litepod-8": ("v2-alpha-tpuv5-lite", "us-west4-a", 1),
    "v4-16": ("tpu-ubuntu2204-base", "us-central2-b", 2),
    "v5litepod-16": ("v2-alpha-tpuv5-lite", "us-west4-a", 4),
}


@pytest.fixture
def stub(tmp_path):
    """(run(script, **env) -> CompletedProcess, calls() -> recorded gcloud argument lists)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(STUB)
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "gcloud.jsonl"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "RUN_DIR", "GCP_", "REPO_URL",
                                                                      "REMOTE_DIR", "PYTHON_VERSION"))}
    base.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", GCLOUD_LOG=str(log), TPU_NAME="t1")

    def run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
        log.write_text("")
        return subprocess.run(["bash", str(TPU / script), *args], env=dict(base, **env), cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    def calls() -> list[list[str]]:
        return [json.loads(line) for line in log.read_text().splitlines()]

    return run, calls


def _flag(call: list[str], name: str) -> str:
    return call[call.index(name) + 1]


def _remote(call: list[str]) -> str:
    return _flag(call, "--command")


@pytest.mark.parametrize("tpu_type", sorted(TYPES))
def test_each_tpu_type(stub, tpu_type):
    run, calls = stub
    runtime, zone, workers = TYPES[tpu_type]
    multi = workers > 1
    run_dir = "gs://bucket/runs/t1" if multi else "runs/t1"
    env = dict(TPU_TYPE=tpu_type, RUN_DIR=run_dir)

    r = run("create.sh", **env)
    assert r.returncode == 0, r.stderr
    (call,) = calls()
    assert call[:5] == ["compute", "tpus", "tpu-vm", "create", "t1"]
    assert (_flag(call, "--accelerator-type"), _flag(call, "--version"), _flag(call, "--zone")) == (tpu_type, runtime, zone)
    assert "--spot" not in call and f"({workers} worker" in r.stdout

    r = run("setup.sh", **env)
    assert r.returncode == 0, r.stderr
    ssh = [c for c in calls() if c[3] == "ssh"]
    assert ssh and all(_flag(c, "--zone") == zone and "--worker=all" in c for c in ssh)
    scp = [c for c in calls() if c[3] == "scp"]
    assert len(scp) == 1 and "--worker=all" in scp[0]  # this checkout, as a tarball, to every worker
    install = _remote(ssh[-1])
    # a Python >= 3.11 venv made by uv (the image's python3 is 3.10), checked after creation
    (version,) = re.findall(r"venv --python (\S+) \.venv", install)
    assert tuple(int(x) for x in version.split(".")) >= (3, 11)
    assert "sys.version_info >= (3, 11)" in install and "pip install -q --python .venv/bin/python -e '.[tpu]'" in install
    assert "jax.distributed.initialize()" in install

    r = run("launch.sh", "--config", "configs/tiny.yaml", "optim.lr=1e-4", **env)
    assert r.returncode == 0, r.stderr
    (call,) = calls()
    assert call[3] == "ssh" and "--worker=all" in call and _flag(call, "--zone") == zone
    remote = _remote(call)
    assert remote.startswith("cd ~/bioinstruct-jax && ") and remote.endswith(" > train.log 2>&1 &")
    words = shlex.split(remote[len("cd ~/bioinstruct-jax && "): -len(" > train.log 2>&1 &")])
    assert words == ["nohup", ".venv/bin/python", "-m", "bioinstruct_jax.train", "--config", "configs/tiny.yaml",
                     "optim.lr=1e-4", f"train.output_dir={run_dir}"]

    r = run("tail.sh", **env)
    assert r.returncode == 0 and "--worker=0" in calls()[0]
    r = run("copy_checkpoints.sh", **env)
    assert r.returncode == 0, r.stderr
    (call,) = calls()
    if multi:
        assert call[:3] == ["storage", "cp", "-r"] and call[3] == run_dir
    else:
        assert call[3] == "scp" and "--worker=0" in call and call[5].endswith(f":~/bioinstruct-jax/{run_dir}")
    r = run("delete.sh", **env)
    assert r.returncode == 0 and calls()[0][3:5] == ["delete", "t1"]

    if multi:  # a pod slice with a local RUN_DIR is refused before anything runs
        r = run("launch.sh", "--config", "configs/tiny.yaml", TPU_TYPE=tpu_type, RUN_DIR="runs/t1")
        assert r.returncode == 2 and "use a bucket" in r.stderr and f"{workers} workers" in r.stderr
        assert calls() == []
        r = run("launch.sh", "train.output_dir=/tmp/x", **env)  # the argument is what counts
        assert r.returncode == 2 and calls() == []


def test_overrides_spot_and_autocheckpoint(stub):
    run, calls = stub
    r = run("create.sh", TPU_TYPE="v4-8", TPU_ZONE="us-central2-x", TPU_VERSION="my-runtime", TPU_SPOT="1")
    assert r.returncode == 0, r.stderr
    (call,) = calls()
    assert (_flag(call, "--zone"), _flag(call, "--version")) == ("us-central2-x", "my-runtime") and "--spot" in call

    # Spot: the disk goes with the TPU, so a local RUN_DIR is refused
    r = run("launch.sh", TPU_TYPE="v4-8", TPU_SPOT="1", RUN_DIR="runs/t1")
    assert r.returncode == 2 and "Spot" in r.stderr and calls() == []
    r = run("launch.sh", TPU_TYPE="v4-8", TPU_SPOT="1", RUN_DIR="gs://b/r")
    assert r.returncode == 0, r.stderr

    r = run("create.sh", TPU_TYPE="v5litepod-16", TPU_AUTOCHECKPOINT="1")
    assert r.returncode == 0, r.stderr
    (call,) = calls()
    assert call[:5] == ["alpha", "compute", "tpus", "tpu-vm", "create"] and "--autocheckpoint-enabled" in call
    r = run("create.sh", TPU_TYPE="v5p-8", TPU_AUTOCHECKPOINT="1")
    assert r.returncode == 2 and "v2-v4 and v5e" in r.stderr and calls() == []
    r = run("create.sh", TPU_TYPE="v9-8")
    assert r.returncode != 0 and "unknown TPU generation" in r.stderr and calls() == []

    r = run("setup.sh", TPU_TYPE="v4-8", PYTHON_VERSION="3.12")
    assert r.returncode == 0 and "venv --python 3.12 .venv" in _remote(calls()[-1])


@pytest.mark.parametrize("given, expected", [((), "cudnn"), (("model.attention_impl=xla",), "xla")])
def test_gpu_launcher_default_yields_to_the_users_choice(given, expected):
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("needs the project's .venv (scripts/setup.sh makes it)")
    env = dict(os.environ, SKIP_INSTALL="1", JAX_PLATFORMS="cpu")
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu" / "launch.sh"), "--print-config", *given], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^\s*attention_impl: {expected}\s*$", r.stdout, re.M), r.stdout
