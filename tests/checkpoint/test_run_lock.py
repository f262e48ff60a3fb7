"""One writer per training run (`checkpoint/run_lock.py`): two real `python -m bioinstruct_jax.train`
processes on one output folder, the second refused with one line naming the first; a lock left by
a killed run taken over with a warning; the lock gone after a clean exit. The lease and PID-reuse
rules are checked on the lock itself with hand-written lock files (another host's, a reused PID).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from bioinstruct_jax.checkpoint.run_lock import LOCK_NAME, RunLock, RunLockedError, process_start_ticks

REPO = pathlib.Path(__file__).resolve().parents[2]
ENV = {**{k: v for k, v in os.environ.items() if k != "BIOINSTRUCT_DEBUG"},
       "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _write_lock(run: pathlib.Path, **fields) -> pathlib.Path:
    run.mkdir(parents=True, exist_ok=True)
    rec = {"host": socket.gethostname(), "pid": 1, "pid_start": None, "started": _iso(time.time()),
           "refreshed": _iso(time.time()), "token": "other", **fields}
    (run / LOCK_NAME).write_text(json.dumps(rec))
    return run / LOCK_NAME


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------------------------
# The lock's rules


def test_live_holder_refused_and_released_lock_is_gone(tmp_path):
    warnings = []
    first = RunLock(tmp_path / "run", warn=warnings.append).acquire()
    rec = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert (rec["host"], rec["pid"]) == (socket.gethostname(), os.getpid())
    assert rec["pid_start"] == process_start_ticks(os.getpid())
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # the same lock as held by another live process of this host
        _write_lock(tmp_path / "run2", pid=holder.pid, pid_start=process_start_ticks(holder.pid))
        with pytest.raises(RunLockedError, match=rf"in use by another training run \(host {socket.gethostname()}, "
                                                 rf"PID {holder.pid}, started "):
            RunLock(tmp_path / "run2").acquire()
    finally:
        holder.kill()
        holder.wait()
    first.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists() and not warnings


def test_dead_pid_and_reused_pid_are_stale(tmp_path):
    warnings = []
    dead = _dead_pid()
    _write_lock(tmp_path / "a", pid=dead)
    lock = RunLock(tmp_path / "a", warn=warnings.append).acquire()
    assert lock.held and f"process {dead} on this host is gone" in warnings[0]
    # a live PID whose start time differs from the recorded one: the PID was given to another process
    _write_lock(tmp_path / "b", pid=os.getppid(), pid_start=(process_start_ticks(os.getppid()) or 0) + 1)
    assert RunLock(tmp_path / "b", warn=warnings.append).acquire().held
    assert f"process {os.getppid()} on this host is gone" in warnings[1]


def test_other_host_needs_the_lease_to_run_out(tmp_path):
    _write_lock(tmp_path / "run", host="tpu-vm-7", pid=4242, refreshed=_iso(time.time() - 100))
    with pytest.raises(RunLockedError, match="host tpu-vm-7, PID 4242"):
        RunLock(tmp_path / "run", lease_s=600).acquire()
    warnings = []
    lock = RunLock(tmp_path / "run", lease_s=60, warn=warnings.append).acquire()
    assert lock.held and "more than the lease of 60 s" in warnings[0]
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["token"] == lock.token


def test_refresh_renews_and_a_taken_over_lock_stops_the_holder(tmp_path):
    lock = RunLock(tmp_path / "run", lease_s=60).acquire()
    before = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    time.sleep(1.1)
    lock.refresh(force=True)
    after = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert after["token"] == before["token"] and after["refreshed"] > before["refreshed"]
    _write_lock(tmp_path / "run", host="elsewhere", pid=9)
    with pytest.raises(RunLockedError, match="taken over by another run .host elsewhere, PID 9"):
        lock.refresh(force=True)
    lock.release()  # not ours any more: left alone
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["host"] == "elsewhere"


def test_non_primary_process_writes_no_lock(tmp_path):
    RunLock(tmp_path / "run", primary=False).acquire()
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------
# Through the train command


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from bioinstruct_jax.data.tokenizer import train_sentencepiece
    from train_helpers import write_task

    root = tmp_path_factory.mktemp("lock")
    train_file, val_file, _ = write_task(root / "data", 64, 16)
    texts = [line for f in (train_file, val_file) for line in f.read_text().splitlines()]
    return {"sp": train_sentencepiece(texts, 300, root / "tok"), "train": train_file, "val": val_file}


def _train_cmd(a, out, **extra) -> list[str]:
    from train_helpers import tiny_overrides

    return [sys.executable, "-m", "bioinstruct_jax.train", *tiny_overrides(out, a["train"], a["val"], **{
        "model.tokenizer": a["sp"], "train.async_checkpointing": False, **extra})]


@pytest.mark.slow
def test_second_train_on_one_folder_is_refused_then_a_killed_holder_is_taken_over(assets, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(_train_cmd(assets, run, **{"train.steps": 1_000_000, "train.save_every": 0}),
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (run / "metrics.jsonl").exists():  # the first run is training, lock held
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.5)
        second = subprocess.run(_train_cmd(assets, run, **{"train.steps": 2}), env=ENV, capture_output=True,
                                text=True, timeout=600)
        assert second.returncode == 2, second.stderr[-3000:]
        assert "Traceback" not in second.stderr
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, second.stderr[-3000:]
        assert f"host {socket.gethostname()}, PID {first.pid}, started " in errors[0]
        assert str(run / LOCK_NAME) in errors[0]
        assert first.poll() is None  # the holder runs on, untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not list(run.glob("checkpoints/[0-9]*"))  # no step saved by either
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == first.pid  # a SIGKILL leaves the lock
    third = subprocess.run(_train_cmd(assets, run, **{"train.steps": 2, "train.save_every": 2}), env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"warning: taking over the stale lock {run / LOCK_NAME}" in third.stderr
    assert f"process {first.pid} on this host is gone" in third.stderr
    assert not (run / LOCK_NAME).exists()  # released at the clean exit
    assert (run / "checkpoints" / "2").is_dir()
