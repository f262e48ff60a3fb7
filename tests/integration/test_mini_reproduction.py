"""`scripts/mini_reproduction.sh` end to end on a few items and steps: the tiny random LLaMA (with
a SentencePiece tokenizer trained here) stands in for SmolLM2, the eval fixtures for ../shared/data.
It checks that the script works and that its table is made of the two evaluations it ran, not
what it scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from hf_fixtures import write_tiny_llama

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from bioinstruct_jax.data.tokenizer import load_tokenizer_files, train_sentencepiece

    d = tmp_path_factory.mktemp("tiny_hf")
    texts = [json.loads(line)["instruction"] for line in
             (REPO_ROOT / "seeds" / "bioinstruct_seeds.jsonl").read_text().splitlines() if line.strip()]
    tok = load_tokenizer_files(train_sentencepiece(texts * 3, 400, d / "sp"))
    tok.save(d)
    write_tiny_llama(d, "gqa_tied", vocab_size=tok.vocab_size, initializer_range=0.3)
    return d


@pytest.mark.slow
def test_script_builds_the_mix_tunes_and_reports_every_scoring(tiny_hf, tmp_path):
    out = tmp_path / "mini"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = ["bash", str(REPO_ROOT / "scripts" / "mini_reproduction.sh"), "--mix", "auto", "--mix-size", "30",
           "--model", str(tiny_hf), "--data-dir", str(REPO_ROOT / "tests" / "fixtures" / "eval"),
           "--out", str(out), "--n-pubmedqa", "3", "--n-medqa", "3", "--n-medmcqa", "2", "--n-qa-gen", "2",
           "--n-ner", "2", "--n-gen", "2", "--n-boot", "50",
           "mesh.fsdp=1", "data.template=alpaca", "data.max_length=128", "data.batch_size=2", "train.log_every=1"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**env, "PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for title in ("Table 1", "Table 2", "Table 3", "baselines on the same items", "Primary endpoints"):
        assert title in proc.stdout
    doc = json.loads((out / "comparison.json").read_text())
    rows = {(r["task"], r.get("label", ""), r["metric"]): r for r in doc["rows"]}
    assert {("pubmedqa", "lm-eval", "loglik_accuracy"), ("medqa", "lm-eval", "loglik_accuracy"),
            ("medqa", "cloze", "loglik_accuracy_norm"), ("medmcqa", "lm-eval, in-task", "loglik_accuracy"),
            ("pubmedqa", "generate", "accuracy"), ("medqa", "generate", "accuracy"), ("bc5cdr", "generate", "f1"),
            ("meqsum", "generate", "rougeL"), ("icliniq", "generate", "bleu")} <= set(rows)
    assert rows[("medqa", "lm-eval", "loglik_accuracy")]["n"] == 3 and rows[("bc5cdr", "generate", "f1")]["n"] == 2
    assert rows[("medqa", "cloze", "loglik_accuracy_norm")]["diagnostics"]["before"]["baselines"]["majority"]
    # the paper's LLaMA-2-7B delta only on QA accuracy rows
    assert rows[("medqa", "lm-eval", "loglik_accuracy")]["paper_delta"] == pytest.approx(37.25 - 30.37, abs=0.01)
    assert rows[("meqsum", "generate", "rougeL")]["paper_delta"] is None
    # before / after are the evaluations' own scores, on the same items, per scoring folder
    for side in ("before", "after"):
        for (task, label, metric), row in rows.items():
            mode = label.split(",")[0]
            res = json.loads((out / side / mode / "results.json").read_text())["tasks"]
            assert row[side]["value"] == pytest.approx(res[task]["metrics"][metric])
    assert json.loads((out / "before" / "lm-eval" / "results.json").read_text())["meta"]["prompt_style"] == "lm-eval"
    ids = lambda side: [json.loads(x)["id"] for x in (out / side / "cloze" / "medqa.predictions.jsonl").read_text().splitlines()]
    assert sorted(ids("before")) == sorted(ids("after"))
    # the mix: the preregistered proportions, no held-out MedMCQA item, one epoch of it trained
    summary = json.loads((out / "mix_summary.json").read_text())
    assert summary["categories"] == {"qa": 7, "ie": 10, "gen": 10, "other": 3}
    mix = [json.loads(x) for x in (out / "mix.jsonl").read_text().splitlines()]
    questions = {json.loads(x)["id"]: json.loads(x)["question"]
                 for x in (REPO_ROOT / "tests/fixtures/eval/medmcqa/dev.json").read_text().splitlines()}
    evaluated = [json.loads(x)["id"] for x in (out / "before" / "lm-eval" / "medmcqa.predictions.jsonl").read_text().splitlines()]
    assert len(evaluated) == 2 and not any(questions[i] in r["input"] for r in mix for i in evaluated)
    meta = doc["meta"]
    assert meta["train_steps"] > 0 and "optim.lr=2e-4" in meta["overrides"] and meta["overall_verdict"]
    assert set(meta["verdicts"]) == {"pubmedqa lm-eval loglik_accuracy", "medqa lm-eval loglik_accuracy"}
    assert meta["stage_rates"]["before"]["medqa/cloze"]["items"] == 3
    assert set(meta["estimated_eval_s_at_default_sizes"]["after"]) == set(meta["stage_rates"]["after"])
    assert (out / "comparison.png").stat().st_size > 0
