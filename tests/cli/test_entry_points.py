"""Every `python -m` entry point reports a bad argument the same way: one `error: ...` line on
stderr, exit code 2, no traceback (cli/errors.run, docs/ERRORS.md); with `--debug` the traceback
comes back. Each bad argument fails before any model loads, so a case costs one Python start; the
cases run side by side."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # twelve Python starts, each importing jax: about a minute on 2 cores


def _cases(tmp: pathlib.Path) -> dict[str, tuple[list[str], str]]:
    """entry point -> (arguments, a text its error line must hold)."""
    missing = tmp / "missing"
    a_file = tmp / "a_file"
    a_file.write_text("not a folder\n", encoding="utf-8")
    return {
        "train": (["--config", str(missing / "run.yaml")], str(missing / "run.yaml")),
        "plan": (["--config", str(missing / "run.yaml")], str(missing / "run.yaml")),
        "generate": (["--model", str(missing / "model"), "--prompt-file", str(missing / "prompts.txt")],
                     str(missing / "prompts.txt")),
        "eval": (["--model", str(missing / "model"), "--tasks", "no_such_task", "--output", str(tmp / "eval")],
                 "no_such_task"),
        "eval.ablation": (["category", "--runs", str(missing / "runs")], str(missing / "runs")),
        "export": (["--checkpoint", str(missing / "run"), "--out", str(tmp / "export")], str(missing / "run")),
        "data.generate": (["--label-only", "--input", str(missing / "tasks.jsonl"),
                           "--output", str(tmp / "labels.jsonl")], str(missing / "tasks.jsonl")),
        "checkpoint.describe": ([str(missing / "run")], str(missing / "run")),
        "quickstart": (["--out", str(a_file / "quickstart")], str(a_file)),
        "jobs.mini_reproduction": (["--model", str(missing / "model"), "--tasks", "no_such_task",
                                    "--out", str(tmp / "mini")], "no_such_task"),
    }


ENTRY_POINTS = ("train", "plan", "generate", "eval", "eval.ablation", "export", "data.generate",
                "checkpoint.describe", "quickstart", "jobs.mini_reproduction")
DEBUG_CASES = ("eval.ablation", "jobs.mini_reproduction")  # entry points that lately learnt --debug


def _run(module: str, args: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    env.pop("BIOINSTRUCT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", f"bioinstruct_jax.{module}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, str]]:
    """Each case run once, three at a time (each start imports jax)."""
    tmp = tmp_path_factory.mktemp("entry_points")
    cases = _cases(tmp)
    assert sorted(cases) == sorted(ENTRY_POINTS)
    jobs = {name: (args, False) for name, (args, _) in cases.items()}
    jobs.update({f"{name} --debug": ([*cases[name][0], "--debug"], True) for name in DEBUG_CASES})
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = {key: pool.submit(_run, key.split()[0], args, tmp) for key, (args, _) in jobs.items()}
        done = {key: f.result() for key, f in futures.items()}
    return {key: (proc, cases[key.split()[0]][1]) for key, proc in done.items()}


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_a_bad_argument_is_one_error_line_and_exit_2(results, module):
    proc, names = results[module]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), proc.stderr[-3000:]
    assert names in errors[0], errors


@pytest.mark.parametrize("module", DEBUG_CASES)
def test_debug_shows_the_traceback(results, module):
    proc, _ = results[f"{module} --debug"]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" in proc.stderr and "unrecognized arguments" not in proc.stderr, proc.stderr[-3000:]
