"""Fault injection for data generation: the CLI is killed (SIGKILL or Ctrl-C) at seeded random
moments against the local OpenAI-compatible server, rerun until it finishes, and its final output
must equal an uninterrupted run's byte for byte: no accepted task lost, none written twice.

The server's replies depend only on the request text (a hash of the prompt picks the tasks, a hash
of each task line picks its label), so the uninterrupted run and the killed-and-resumed one see
the same replies whatever the timing; small per-request delays make replies complete out of order
at concurrency > 1. The kill is fired by the server itself a few milliseconds after its K-th
request since the process started (K and the delay drawn from a seeded RNG), so it lands while
replies are being filtered, committed, appended or labelled. The server holds back its reply to that
K-th request until the signal is sent, so the run cannot finish before its kill however slowly the
test process's threads are scheduled (a timer thread fired late on a loaded machine, and the run
had finished by then).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from bioinstruct_jax.data.self_instruct.cli import main as generate_main
from bioinstruct_jax.data.labels import LABEL_PROMPT_HEADER
from bioinstruct_jax.data.records import read_jsonl_records
from openai_server import Reply, ScriptedOpenAIServer

REPO = pathlib.Path(__file__).resolve().parents[2]
VOCAB = [f"word{i}" for i in range(500)]
CATS = ("qa", "ie", "gen", "other")


def _h(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def task_text(k: int, n: int) -> str:
    rng = random.Random(k)
    return (f"{n}. Instruction: Describe {' '.join(rng.sample(VOCAB, 8))}.\n"
            f"{n}. Input: Case {k}: {' '.join(rng.sample(VOCAB, 10))}\n"
            f"{n}. Output: Answer {k}: {' '.join(rng.sample(VOCAB, 5))}")


class ContentServer:
    """Replies as a pure function of the request; can SIGKILL/SIGINT a process after K requests."""

    def __init__(self, garbage_labels: bool, space: int = 700):
        self.garbage_labels = garbage_labels
        self.space = space  # distinct tasks the server can give
        self.lock = threading.Lock()
        self.count = 0
        self.plan: tuple[int, int, float, int] | None = None  # (pid, at request K, delay s, signal)

    def arm(self, pid: int, at: int, delay: float, sig: int) -> None:
        with self.lock:
            self.count, self.plan = 0, (pid, at, delay, sig)

    def disarm(self) -> None:
        with self.lock:
            self.plan = None

    def __call__(self, request: dict) -> Reply:
        text = request["messages"][0]["content"]
        with self.lock:
            self.count += 1
            fire = self.plan if self.plan and self.count == self.plan[1] else None
        if fire:
            pid, _, delay, sig = fire
            time.sleep(delay)  # the other requests in flight are answered and processed meanwhile
            _signal(pid, sig)  # before this reply goes out: the run cannot finish ahead of its kill
        h = _h(text)
        if text.startswith(LABEL_PROMPT_HEADER):
            if self.garbage_labels:
                return Reply.text("I am unable to classify these tasks.", delay_s=0.005)
            lines = text[len(LABEL_PROMPT_HEADER):].splitlines()
            labels = [f"{i}. {CATS[_h(line.split('. ', 1)[1]) % 4]}" for i, line in enumerate(lines, 1)]
            return Reply.text("\n".join(labels), delay_s=(h % 20) / 1000)
        ks = [_h(f"{text}#{j}") % self.space for j in range(2 + h % 5)]  # repeats across replies -> ROUGE rejections
        body = "\n\n".join(task_text(k, n) for n, k in enumerate(ks, 4))
        return Reply.text(body.split("Instruction:", 1)[1].lstrip(), delay_s=(h % 30) / 1000)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _args(server: ScriptedOpenAIServer, out: pathlib.Path, n: int, concurrency: int) -> list[str]:
    return ["--base-url", server.base_url, "--model", "scripted", "--output", str(out), "--num-instructions", str(n),
            "--concurrency", str(concurrency), "--label-batch-size", "7", "--backoff", "0.01", "--timeout", "20",
            "--seed", "5", "--no-progress"]


@pytest.mark.parametrize("garbage_labels,concurrency,n,max_kills", [(False, 4, 60, 5), (True, 2, 30, 3)],
                         ids=["labels-ok-c4", "labels-unreadable-c2"])
def test_killed_at_random_moments_resumes_to_the_uninterrupted_result(tmp_path, garbage_labels, concurrency, n,
                                                                       max_kills):
    script = ContentServer(garbage_labels)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    with ScriptedOpenAIServer(script) as server:
        reference = tmp_path / "reference.jsonl"
        assert generate_main(_args(server, reference, n, concurrency)) == (1 if garbage_labels else 0)
        ref_records = read_jsonl_records(reference)
        assert len(ref_records) == n

        out = tmp_path / "killed.jsonl"
        rng = random.Random(1234 + concurrency)
        kills = {signal.SIGKILL: 0, signal.SIGINT: 0}
        for attempt in range(max_kills + 1):  # killed up to max_kills times, then left to finish
            proc = subprocess.Popen([sys.executable, "-m", "bioinstruct_jax.data.generate",
                                     *_args(server, out, n, concurrency)], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if attempt < max_kills:
                sig = signal.SIGINT if attempt == 1 else signal.SIGKILL
                script.arm(proc.pid, at=rng.randint(1, 5), delay=rng.uniform(0.0, 0.04), sig=sig)
            stdout, stderr = proc.communicate(timeout=120)
            script.disarm()
            if proc.returncode == -signal.SIGKILL:
                kills[signal.SIGKILL] += 1
                continue
            if proc.returncode == 130:  # Ctrl-C: a clean stop with one line
                kills[signal.SIGINT] += 1
                assert "Traceback" not in stderr
                assert stderr.strip().splitlines()[-1].startswith("interrupted"), stderr
                continue
            assert proc.returncode == (1 if garbage_labels else 0), stderr
            break
        else:
            pytest.fail("the run never finished")
    assert kills[signal.SIGKILL] >= 2 and kills[signal.SIGINT] >= 1, kills
    assert out.read_bytes() == reference.read_bytes()
    recs = read_jsonl_records(out)
    assert len({r.id for r in recs}) == len({r.instruction for r in recs}) == n
    summary = json.loads(stdout)
    assert summary["accepted"] == n and summary["generation_complete"]
    labels_file = pathlib.Path(summary["labels_file"])
    label_lines = labels_file.read_text().splitlines()
    if garbage_labels:
        assert label_lines == [] and {r.category for r in recs} == {""}
        assert summary["unlabelled"] == n and "could not be labelled" in stderr
    else:
        ref_labels = (tmp_path / "reference.labels.jsonl").read_text().splitlines()
        assert sorted(label_lines) == sorted(ref_labels) and len(label_lines) == n
        assert {r.category for r in recs} <= set(CATS) and summary["unlabelled"] == 0


@pytest.mark.parametrize("keep_lines", [0, 1, "torn"])
def test_kill_between_commit_record_and_append_loses_nothing(tmp_path, keep_lines):
    """The moment a random kill rarely hits, made by hand: the progress file already records request
    i's accepted tasks, but the output holds none, one, or a torn part of them."""
    script = ContentServer(garbage_labels=False)
    with ScriptedOpenAIServer(script) as server:
        reference = tmp_path / "reference.jsonl"
        assert generate_main(_args(server, reference, 25, 1)) == 0

        out = tmp_path / "cut.jsonl"
        assert generate_main(_args(server, out, 25, 1) + ["--max-requests", "3"]) == 1  # stopped early
        state = json.loads(out.with_suffix(".progress.json").read_text())
        pending = state["pending"]
        assert len(pending) >= 2 and state["written"] == len(read_jsonl_records(out))
        lines = out.read_text().splitlines(keepends=True)
        before = lines[: len(lines) - len(pending)]
        if keep_lines == "torn":
            cut = "".join(before) + lines[len(before)][:25]
        else:
            cut = "".join(before + lines[len(before):len(before) + keep_lines])
        out.write_text(cut)
        assert generate_main(_args(server, out, 25, 1)) == 0
    assert out.read_bytes() == reference.read_bytes()


def test_output_changed_outside_is_refused_not_guessed(tmp_path, capsys):
    """Fewer tasks in the output than its progress file's last commit accounts for (lines deleted
    by hand): a one-line error naming both files, not a silent resume."""
    with ScriptedOpenAIServer(ContentServer(garbage_labels=False)) as server:
        out = tmp_path / "gen.jsonl"
        assert generate_main(_args(server, out, 12, 1) + ["--no-label"]) == 0
        lines = out.read_text().splitlines(keepends=True)
        out.write_text("".join(lines[:3]))
        capsys.readouterr()
        assert generate_main(_args(server, out, 12, 1) + ["--no-label"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {out} holds 3 tasks but {out.with_suffix('.progress.json')} records 12")
    assert len(err.splitlines()) == 1


def test_output_without_progress_file_resumes_from_the_output(tmp_path):
    """The way out the error above offers: with the progress file gone, the output is trusted and
    generation goes on from it (counters restart), with no task written twice."""
    with ScriptedOpenAIServer(ContentServer(garbage_labels=False)) as server:
        out = tmp_path / "gen.jsonl"
        assert generate_main(_args(server, out, 8, 1) + ["--no-label"]) == 0
        first = out.read_text().splitlines()
        out.with_suffix(".progress.json").unlink()
        assert generate_main(_args(server, out, 16, 1) + ["--no-label"]) == 0
    recs = read_jsonl_records(out)
    assert out.read_text().splitlines()[:8] == first and len(recs) == 16
    assert len({r.id for r in recs}) == len({r.instruction for r in recs}) == 16
