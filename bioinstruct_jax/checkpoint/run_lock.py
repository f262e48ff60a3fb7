"""One writer per training run: a lock file in the run folder naming host, PID and start time.

`RunLock(run_dir).acquire()` writes `<run_dir>/run.lock`, a JSON object
  {"host", "pid", "pid_start", "started", "refreshed", "token"}
(`started` / `refreshed` are ISO-8601 UTC times; `pid_start` is the process's start time in clock
ticks since boot, from /proc, so a PID the system has since given to another process does not
count as the holder). A second run on the same folder is refused with `RunLockedError`, one line
naming the holder. A lock is stale, and taken over with a warning, when
  - its holder ran on this host and that process is gone (or the PID now belongs to another one);
  - or it was not refreshed for `lease_s` seconds (a holder on another host, for example a run on a
    bucket or on shared storage, cannot be asked whether it lives; the holder refreshes the lease
    at every metrics log and checkpoint save, `refresh`).
`release()` removes the lock when it is still this holder's; a run killed hard leaves it behind,
and the next run finds it stale.

On a local disk the lock is created with O_CREAT | O_EXCL, so of two runs starting together
exactly one gets it. Object stores (gs://) have no exclusive create through `epath`: there the lock
is written, read back after a moment and kept only when it still holds this holder's token, which
separates runs that start more than that moment apart. A holder that finds, when it refreshes,
that another run has taken the lock over stops with `RunLockedError` instead of writing on.

Several processes (multi-host): process 0 alone holds the lock (`primary=False` makes the other
processes' lock a no-op); the training loop shares process 0's verdict with the others.
Paths are anything `etils.epath.Path` takes (local or gs://).
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
import time
import uuid
from typing import Any, Callable

from etils import epath

from bioinstruct_jax.config.storage import as_path

LOCK_NAME = "run.lock"
DEFAULT_LEASE_S = 3600
_READBACK_S = 1.0  # object stores: how long to wait before reading a written lock back
_MIN_REFRESH_S = 30.0  # refresh at most this often (a bucket write per metrics log would be wasteful)


class RunLockedError(ValueError):
    """The run folder is held by another live run (the message names it)."""


def _now_iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> float | None:
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None


def process_start_ticks(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux /proc), or None."""
    try:
        stat = epath.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces; fields after its ")" are plain
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether process `pid` runs on this host (and, when `start_ticks` is known, is the same process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    if start_ticks is not None:
        now = process_start_ticks(pid)
        if now is not None and now != start_ticks:
            return False  # the PID was reused
    return True


class RunLock:
    """The lock of one run folder (see the module docstring). Use as a context manager or call
    `acquire` / `refresh` / `release`."""

    def __init__(self, run_dir: Any, *, lease_s: float = DEFAULT_LEASE_S, primary: bool = True,
                 warn: Callable[[str], None] | None = None):
        self.run_dir = as_path(run_dir)  # gs:// needs gcsfs: one line naming the extra
        self.path = self.run_dir / LOCK_NAME
        self.lease_s = float(lease_s)
        self.primary = primary
        self.warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
        self.held = False
        self.token = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started = time.time()
        self._last_refresh = 0.0

    # -- the record ----------------------------------------------------------------------------
    def _record(self, refreshed: float) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "pid_start": process_start_ticks(self.pid),
                "started": _now_iso(self.started), "refreshed": _now_iso(refreshed), "token": self.token}

    def read(self) -> dict[str, Any] | None:
        """The lock's record, None when there is no lock; an unreadable lock is an empty dict."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            rec = json.loads(text)
        except json.JSONDecodeError:
            return {}
        return rec if isinstance(rec, dict) else {}

    @property
    def _local(self) -> bool:
        return "://" not in str(self.run_dir)

    def describe(self, rec: dict[str, Any]) -> str:
        return (f"host {rec.get('host', '?')}, PID {rec.get('pid', '?')}, started {rec.get('started', '?')}, "
                f"lease last refreshed {rec.get('refreshed', '?')}")

    def stale_reason(self, rec: dict[str, Any]) -> str | None:
        """Why the lock `rec` no longer holds (its holder is gone, or its lease ran out), or None."""
        if not rec:
            return "the lock file is unreadable (cut short while being written?)"
        if rec.get("host") == self.host and isinstance(rec.get("pid"), int):
            if not pid_alive(rec["pid"], rec.get("pid_start")):
                return f"process {rec['pid']} on this host is gone"
            return None
        refreshed = _parse_iso(rec.get("refreshed", ""))
        if refreshed is None:
            return "the lock names no refresh time"
        age = time.time() - refreshed
        if age > self.lease_s:
            return f"its lease was last refreshed {age:.0f} s ago, more than the lease of {self.lease_s:.0f} s"
        return None

    def _refuse(self, rec: dict[str, Any]) -> RunLockedError:
        return RunLockedError(
            f"{self.run_dir} is in use by another training run ({self.describe(rec)}; lock file {self.path}): "
            f"wait for it to end or choose another train.output_dir; a lock whose holder is gone is taken over "
            f"by the next start (at once on the same host; from another host after train.lock_lease_s="
            f"{self.lease_s:.0f} s without refresh)")

    # -- acquire / refresh / release -----------------------------------------------------------
    def acquire(self) -> "RunLock":
        if not self.primary or self.held:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a takeover raced by another run: look again
            rec = self.read()
            if rec is not None:
                if rec.get("token") == self.token:
                    break
                if rec and rec.get("host") == self.host and rec.get("pid") == self.pid:
                    pass  # this process's own lock from an earlier run() that ended without release
                else:
                    reason = self.stale_reason(rec)
                    if reason is None:
                        raise self._refuse(rec)
                    self.warn(f"taking over the stale lock {self.path} ({self.describe(rec) if rec else 'no holder'}): "
                              f"{reason}")
                self._remove()
            if self._create():
                break
        else:
            raise self._refuse(self.read() or {})
        self.held = True
        self._last_refresh = time.time()
        return self

    def _create(self) -> bool:
        """Write the lock if none is there; False when another run created one first."""
        now = time.time()
        data = json.dumps(self._record(now), indent=1).encode()
        if self._local:
            try:
                fd = os.open(os.fspath(self.path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        if self.path.exists():
            return False
        self.path.write_bytes(data)
        time.sleep(_READBACK_S)
        rec = self.read()
        return bool(rec) and rec.get("token") == self.token

    def _remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def refresh(self, *, force: bool = False) -> None:
        """Renew the lease (at most every 30 s unless `force`); a lock another run has taken over
        stops this one with `RunLockedError`."""
        if not self.held:
            return
        now = time.time()
        if not force and now - self._last_refresh < min(_MIN_REFRESH_S, self.lease_s / 4):
            return
        rec = self.read()
        if rec is None or rec.get("token") != self.token:
            self.held = False
            raise RunLockedError(
                f"{self.run_dir}: this run's lock was taken over by another run "
                f"({self.describe(rec) if rec else 'the lock file is gone'}; lock file {self.path}); "
                f"stopping so that two runs do not write one folder")
        data = json.dumps(self._record(now), indent=1)
        if self._local:  # replace in one rename, so a reader never sees a half-written lock
            tmp = self.run_dir / f".{LOCK_NAME}.{self.token}.tmp"
            tmp.write_text(data)
            os.replace(os.fspath(tmp), os.fspath(self.path))
        else:
            self.path.write_text(data)
        self._last_refresh = now

    def release(self) -> None:
        """Remove the lock if it is still this run's."""
        if not self.held:
            return
        self.held = False
        try:
            rec = self.read()
        except OSError:
            return
        if rec is not None and rec.get("token") == self.token:
            try:
                self._remove()
            except OSError as err:
                if err.errno not in (errno.ENOENT,):
                    self.warn(f"could not remove the run lock {self.path}: {err}")

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


__all__ = ["RunLock", "RunLockedError", "LOCK_NAME", "DEFAULT_LEASE_S", "pid_alive", "process_start_ticks"]
