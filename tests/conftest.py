"""Shared pytest fixtures: the optional ../shared data folder and small helpers."""

from __future__ import annotations

import os

# Every test process sees 8 virtual CPU devices (multi-device sharding tests); this must run before
# jax is imported. Tests that want one device use jax.devices()[:1].
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# The test extra installs libtpu (the planner compiles for TPU slices ahead of time); the tests run on
# the CPU, so JAX must not try to bring up a TPU backend (and subprocesses inherit this).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# One persistent XLA compilation cache for the test process and every subprocess it starts (they
# inherit the environment): many tests build the same tiny model, step or decode loop and compile the
# same program in a new jit or a new process. The cache key is the compiled program itself (its HLO),
# the compile options, XLA_FLAGS, the backend and the jax / jaxlib versions, so a changed program or
# flag is a miss and compiles afresh; a hit returns the executable that compile would have built
# (its HLO text and memory analysis included). BIOINSTRUCT_TEST_JAX_CACHE=0 turns it off.
if os.environ.get("BIOINSTRUCT_TEST_JAX_CACHE", "1") != "0":
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO_ROOT / ".cache" / "jax-compilation"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest

SHARED_DIR = pathlib.Path(os.environ.get("BIOINSTRUCT_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """The read-only ../shared folder; skips the test when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"needs the shared data folder at {SHARED_DIR} (not present on this machine)")
    return SHARED_DIR


def shared_path(shared: pathlib.Path, relative: str) -> pathlib.Path:
    """A file under shared/, or a skip naming the missing file."""
    path = shared / relative
    if not path.exists():
        pytest.skip(f"needs {path} (not present on this machine)")
    return path
