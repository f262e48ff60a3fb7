"""A wheel install runs outside the checkout: the seeds, configs and quickstart data are package data.

The wheel is built (pip, no build isolation, nothing downloaded) from a copy of the files a build
reads (pyproject.toml, README.md, the package and the top-level folders its `resources/` links point
to), and installed without dependencies into a fresh venv whose only other packages are this venv's
site-packages, added by a `.pth` line (so the checkout's editable install is not active there:
`import bioinstruct_jax` finds the wheel). From an empty working directory it then runs
`python -m bioinstruct_jax.train --config tiny` (a packaged config naming packaged seeds and
tokenizer), the `bioinstruct-train` console script, and `python -m bioinstruct_jax.quickstart --tiny`.

The one-line bugs it catches: package data missing from the wheel (pyproject's package-data), a
module that reads a file through the repository's layout instead of `importlib.resources`.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BUILD_INPUTS = ("pyproject.toml", "README.md", "bioinstruct_jax", "seeds", "configs", "data/quickstart")


def _build_wheel(tmp: pathlib.Path) -> pathlib.Path:
    src = tmp / "src"
    for name in BUILD_INPUTS:
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, target)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(tmp / "dist"), str(src)], check=True, timeout=600)
    return next((tmp / "dist").glob("bioinstruct_jax-*.whl"))


def _venv_with_wheel(tmp: pathlib.Path, wheel: pathlib.Path) -> pathlib.Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, text=True, stdout=subprocess.PIPE).stdout.strip()
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}  # no checkout in sight
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True, timeout=600, env=clean)
    # then this venv's packages, after the new venv's own (a plain path line: its editable-install hook
    # stays off); added after the install, so that pip does not take the editable install for this one
    pathlib.Path(site, "shared_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


@pytest.mark.slow
def test_wheel_install_trains_and_runs_the_quickstart_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    venv = _venv_with_wheel(tmp_path, wheel)
    python = str(venv / "bin" / "python")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("JAX_")}
    env["JAX_PLATFORMS"] = "cpu"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=empty, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=900)

    where = run(python, "-c", "import bioinstruct_jax; print(bioinstruct_jax.__file__)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(venv)), where.stdout  # the wheel, not the checkout

    config = run(str(venv / "bin" / "bioinstruct-train"), "--config", "tiny", "--print-config")
    assert config.returncode == 0, config.stderr[-2000:]
    assert f"tokenizer: {venv}" in config.stdout and f"train_file: {venv}" in config.stdout

    trained = run(python, "-m", "bioinstruct_jax.train", "--config", "configs/tiny.yaml", "train.steps=2",
                  "train.save_every=2", "train.eval_every=0", "train.progress_bar=false", "data.max_length=128")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads(trained.stdout.strip().splitlines()[-1])["step"] == 2
    assert (empty / "runs" / "tiny" / "checkpoints" / "2").is_dir()

    quick = run(python, "-m", "bioinstruct_jax.quickstart", "--tiny", "--out", "qs", "--eval-limit", "2",
                "train.steps=2", "train.eval_every=2", "train.save_every=2", "data.max_length=128")
    assert quick.returncode == 0, quick.stderr[-3000:]
    assert (empty / "qs" / "results.json").is_file()
    assert (empty / "qs" / "export").is_dir()
    assert sorted(p.name for p in empty.iterdir()) == ["qs", "runs"]  # nothing read from or written to a checkout
