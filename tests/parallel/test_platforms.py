"""libtpu stays out of the way on a machine without a TPU (no TPU backend start, no libtpu noise)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from bioinstruct_jax.parallel import platforms

REPO = pathlib.Path(__file__).resolve().parents[2]
PROBE = """
import bioinstruct_jax, os, jax
jax.devices()
from jax._src import xla_bridge
print(os.environ.get("JAX_PLATFORMS"), sorted(xla_bridge._backend_errors))
"""


@pytest.mark.skipif(platforms.tpu_attached(), reason="this machine has a TPU: JAX must use it")
def test_no_tpu_backend_is_started_without_a_tpu():
    pytest.importorskip("libtpu", reason="only matters where libtpu is installed (test / plan extras)")
    # A machine without a TPU: none of Cloud TPU's variables (the planner's TPU path sets some in
    # the pytest process) and no JAX_PLATFORMS.
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS" and k not in platforms.TPU_ENV_VARS}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    value, errors = proc.stdout.strip().split(" ", 1)
    assert value.endswith("cpu") and "tpu" not in value
    assert errors == "[]"  # JAX did not even try (and fail) to start a TPU backend
    assert "libtpu" not in proc.stderr and "INVALID_ARGUMENT" not in proc.stderr


def test_a_users_jax_platforms_is_kept(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "")
    assert platforms.keep_libtpu_away() is None and os.environ["JAX_PLATFORMS"] == ""


def test_gpu_plugins_stay_available(tmp_path, monkeypatch):
    plugins = tmp_path / "jax_plugins"
    (plugins / "xla_cuda12").mkdir(parents=True)
    (plugins / "xla_cuda12" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert platforms.local_platforms() == ["cuda", "cpu"]
