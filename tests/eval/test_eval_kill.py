"""SIGKILL during `python -m bioinstruct_jax.eval`, twice, then the same command again: results.json
is byte-equal to an uninterrupted run's, and every item was predicted once (the predictions file
holds each id once, and the resumed runs predicted only the items the killed ones had not
written). A tiny random HF LLaMA, a SentencePiece tokenizer and a small jsonl task."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
ENV = {**{k: v for k, v in os.environ.items() if k != "BIOINSTRUCT_DEBUG"},
       "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
N_ITEMS = 48  # one is held out as the one-shot pool: 47 scored


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from hf_fixtures import write_tiny_llama
    from bioinstruct_jax.data.tokenizer import train_sentencepiece
    from train_helpers import task_records

    root = tmp_path_factory.mktemp("eval_kill")
    write_tiny_llama(root / "hf", vocab_size=300)
    rows = task_records(N_ITEMS, seed=3)
    for i, r in enumerate(rows):
        r["input"] = f"{r['input']} item {i}"  # distinct items
    data = root / "task.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sp = train_sentencepiece(data.read_text().splitlines(), 300, root / "tok")
    return {"hf": root / "hf", "sp": sp, "data": data}


def _cmd(a, out) -> list[str]:
    return [sys.executable, "-m", "bioinstruct_jax.eval", "--model", str(a["hf"]),
            "--predictor-arg", f"tokenizer={a['sp']}", "--tasks", f"jsonl:{a['data']}:exact_match",
            "--output", str(out), "--batch-size", "1", "--max-new-tokens", "12", "--shots", "0"]


def _lines(path: pathlib.Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _kill_after(cmd, pred_file: pathlib.Path, at_least: int) -> int:
    """Start `cmd`, SIGKILL it once the predictions file holds `at_least` lines; the lines then."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600
        while len(_lines(pred_file)) < at_least:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return len(_lines(pred_file))


@pytest.mark.slow
def test_killed_eval_resumes_to_the_uninterrupted_results(assets, tmp_path):
    whole = tmp_path / "whole"
    done = subprocess.run(_cmd(assets, whole), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (name, _), = json.loads((whole / "results.json").read_text())["tasks"].items()
    n = len(_lines(whole / f"{name}.predictions.jsonl"))
    assert n == N_ITEMS - 1

    out = tmp_path / "killed"
    pred_file = out / f"{name}.predictions.jsonl"
    first = _kill_after(_cmd(assets, out), pred_file, 3)
    second = _kill_after(_cmd(assets, out), pred_file, first + 10)
    assert 3 <= first < second < n, (first, second)  # both kills landed mid-run
    final = subprocess.run(_cmd(assets, out), env=ENV, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]

    assert (out / "results.json").read_bytes() == (whole / "results.json").read_bytes()
    lines = _lines(pred_file)
    ids = [json.loads(line)["id"] for line in lines if line.strip()]
    assert len(ids) == len(set(ids)) == n  # each item predicted (and written) once
    by_id = {json.loads(line)["id"]: json.loads(line) for line in lines}
    assert by_id == {json.loads(line)["id"]: json.loads(line) for line in _lines(whole / f"{name}.predictions.jsonl")}
