"""llama.cpp for the suite, through node-llama-cpp's prebuilt linux-x64 binaries.

`node_llama_cpp()` installs `node-llama-cpp` (pinned, `NODE_LLAMA_CPP_VERSION`) once into
`.cache/node-llama-cpp/` under the repository (ignored by git) with npm, and returns that folder;
it skips the calling test, with the reason, where node or npm is missing or the install fails.
Only the CPU build is installed: the package's optional GPU builds (CUDA, Vulkan) are omitted and
its post-install step is told not to download or build anything.
`run_llama_cpp(...)` runs `tests/llama_cpp_greedy.mjs` on a GGUF file and returns its JSON answer.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import shutil
import subprocess

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NODE_LLAMA_CPP_VERSION = "3.21.1"
CACHE_DIR = REPO_ROOT / ".cache" / "node-llama-cpp"
SCRIPT = pathlib.Path(__file__).with_name("llama_cpp_greedy.mjs")


def _installed(folder: pathlib.Path) -> bool:
    pkg = folder / "node_modules" / "node-llama-cpp" / "package.json"
    return pkg.is_file() and json.loads(pkg.read_text()).get("version") == NODE_LLAMA_CPP_VERSION


def node_llama_cpp() -> pathlib.Path:
    """The folder holding node_modules/node-llama-cpp (installed on first use), or a skip."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} on PATH to run llama.cpp through node-llama-cpp")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time
        if not _installed(CACHE_DIR):
            env = dict(os.environ, NODE_LLAMA_CPP_SKIP_DOWNLOAD="true")
            cmd = ["npm", "install", "--prefix", str(CACHE_DIR), "--save-exact", "--no-audit", "--no-fund",
                   "--omit=optional", f"node-llama-cpp@{NODE_LLAMA_CPP_VERSION}",
                   f"@node-llama-cpp/linux-x64@{NODE_LLAMA_CPP_VERSION}"]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0 or not _installed(CACHE_DIR):
                pytest.skip(f"npm could not install node-llama-cpp@{NODE_LLAMA_CPP_VERSION} "
                            f"(exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
    return CACHE_DIR


def run_llama_cpp(gguf_file: pathlib.Path, request: dict, timeout: float = 300) -> dict:
    """Run the node script on `gguf_file` with `request` (see llama_cpp_greedy.mjs); its JSON answer."""
    folder = node_llama_cpp()
    env = dict(os.environ, NODE_PATH=str(folder / "node_modules"))
    proc = subprocess.run(["node", str(SCRIPT), str(gguf_file), json.dumps(request)], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"llama.cpp run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])
