"""The labelling pass alone (`--label-only`) on an existing instruction file, against the local
OpenAI-compatible server: labels in the TFDS builder's `labels_file` shape, failures counted and
left unlabelled, a rerun asking only for what is missing."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from bioinstruct_jax.data.self_instruct.cli import main as generate_main
from bioinstruct_jax.data.labels import LABEL_PROMPT_HEADER, parse_labels
from bioinstruct_jax.data.records import InstructionRecord, read_instruction_file
from bioinstruct_jax.data.tfds.bioinstruct import read_labels
from openai_server import Reply, ScriptedOpenAIServer

REPO = pathlib.Path(__file__).resolve().parents[2]
# (instruction, the label the server gives it)
TASKS = [("Answer the multiple-choice question about beta blockers.", "qa"),
         ("Extract every drug name from the discharge note.", "ie"),
         ("Write a referral letter for the patient below.", "gen"),
         ("Recommend whether this patient fits the trial.", "other"),
         ("Summarize the abstract in two sentences.", "gen"),
         ("List the adverse events mentioned in the report.", "ie")]
LABEL_OF = dict(TASKS)


class Labeller:
    """Labels each task line by its instruction; tasks in `refuse` get an unreadable line."""

    def __init__(self, refuse=()):
        self.refuse = set(refuse)
        self.asked: list[list[str]] = []

    def __call__(self, request):
        body = request["messages"][0]["content"]
        assert body.startswith(LABEL_PROMPT_HEADER)
        instrs = [line.split(". ", 1)[1].split(" [input:")[0] for line in body[len(LABEL_PROMPT_HEADER):].splitlines()]
        self.asked.append(instrs)
        return Reply.text("\n".join(f"{i}. {'no idea' if t in self.refuse else LABEL_OF[t]}"
                                    for i, t in enumerate(instrs, 1)))


def write_published_like(path: pathlib.Path) -> None:
    """A JSON array without ids or categories, like biomed_instruct_25k.json; one instruction twice."""
    recs = [{"instruction": t, "input": f"case {i}", "output": f"answer {i}"} for i, (t, _) in enumerate(TASKS)]
    recs.append({"instruction": TASKS[0][0], "input": "another case", "output": "another answer"})
    path.write_text(json.dumps(recs, indent=1))


def args(server, *extra):
    return ["--label-only", "--base-url", server.base_url, "--model", "scripted", "--label-batch-size", "4",
            "--concurrency", "2", "--no-progress", *extra]


def test_label_only_writes_the_builders_labels_file_and_resumes(tmp_path, capsys):
    src = tmp_path / "biomed_instruct_25k.json"
    write_published_like(src)
    refuse = {TASKS[1][0], TASKS[4][0]}
    labeller = Labeller(refuse)
    with ScriptedOpenAIServer(labeller) as server:
        assert generate_main(args(server, "--input", str(src), "--label-attempts", "2")) == 1
        captured = capsys.readouterr()
        summary = json.loads(captured.out)
        out = tmp_path / "biomed_instruct_25k.labels.jsonl"  # the default beside the input
        assert summary["output"] == str(out)
        assert summary["tasks"] == 6 and summary["labelled"] == 4 and summary["label_failures"] == 2
        assert summary["unlabelled"] == 2 and not summary["complete"]
        assert "2 tasks could not be labelled" in captured.err
        # the refused ones were asked twice (second round in a smaller batch), never put into "other"
        assert sum(t in refuse for batch in labeller.asked for t in batch) == 4
        rows = [json.loads(l) for l in out.read_text().splitlines()]
        assert all(set(r) == {"instruction", "category"} for r in rows)
        assert {r["instruction"]: r["category"] for r in rows} == {t: c for t, c in TASKS if t not in refuse}

        labeller.refuse.clear()
        labeller.asked.clear()
        assert generate_main(args(server, "--input", str(src), "--output", str(out))) == 0
        assert sorted(t for batch in labeller.asked for t in batch) == sorted(refuse)  # only what was missing
    labels = read_labels(out)  # the TFDS builder's reader
    records, _ = read_instruction_file(src)
    assert [labels[f"ins:{r.instruction}"] for r in records] == [LABEL_OF[r.instruction] for r in records]


def test_label_only_keys_by_id_when_records_have_ids(tmp_path):
    src = tmp_path / "gen.jsonl"
    src.write_text("".join(InstructionRecord(t, "", "x", "", f"task_{i}").to_json() + "\n"
                           for i, (t, _) in enumerate(TASKS)))
    with ScriptedOpenAIServer(Labeller()) as server:
        assert generate_main(args(server, "--input", str(src), "--output", str(tmp_path / "l.jsonl"))) == 0
    labels = read_labels(tmp_path / "l.jsonl")
    assert [labels[f"id:task_{i}"] for i in range(len(TASKS))] == [c for _, c in TASKS]


def test_label_only_cli_errors_are_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    base = [sys.executable, "-m", "bioinstruct_jax.data.generate", "--base-url", "http://127.0.0.1:9/v1"]
    cases = {
        "missing input": (["--label-only", "--input", str(tmp_path / "nope.json")], "nope.json"),
        "no --input": (["--label-only"], "--label-only needs --input"),
        "output is input": (["--label-only", "--input", str(REPO / "seeds" / "bioinstruct_seeds.jsonl"),
                             "--output", str(REPO / "seeds" / "bioinstruct_seeds.jsonl")], "is the --input file"),
    }
    for name, (extra, expect) in cases.items():
        proc = subprocess.run(base + extra, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and expect in proc.stderr and "Traceback" not in proc.stderr, (name, proc.stderr)


def test_parse_labels_reads_loose_lines():
    assert parse_labels("1. QA\n2) **ie**\n3 - Generation\n4. other\n6. qa", 5) == ["qa", "ie", "gen", "other", None]
