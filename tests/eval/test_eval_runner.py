"""Runner and CLI with a deterministic test double for the model: predictions JSONL, results.json,
the printed table, one-shot prompts in the training template, and resume after an interruption."""

from __future__ import annotations

import json
import pathlib

import pytest

from bioinstruct_jax.data.templates import format_prompt
from bioinstruct_jax.eval import runner, tasks as T
from bioinstruct_jax.eval.__main__ import main
from bioinstruct_jax.eval.predictor import Predictor

FIX = pathlib.Path(__file__).parents[1] / "fixtures" / "eval"


class FixedPredictor:
    """Replies `reply` to every prompt; scores a continuation by minus its length (shortest wins,
    first on ties). Records every call. Raises after `fail_after` generate calls if set."""

    def __init__(self, reply: str = "A", fail_after: int | None = None):
        self.reply = reply
        self.fail_after = fail_after
        self.generated: list[str] = []
        self.scored: list[tuple[str, str]] = []
        self.calls = 0

    def generate(self, prompts, *, max_new_tokens, stop=None):
        assert max_new_tokens > 0 and stop
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.generated += prompts
        return [self.reply for _ in prompts]

    def score(self, prompts, continuations):
        self.scored += list(zip(prompts, continuations))
        return [-float(len(c)) for c in continuations]


def _lines(path: pathlib.Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def test_double_is_a_predictor():
    assert isinstance(FixedPredictor(), Predictor)


def test_medqa_both_modes_hand_computed(tmp_path):
    cfg = runner.EvalConfig(output_dir=str(tmp_path), qa_mode="both", batch_size=2)
    task = T.get_task("medqa")
    res = runner.run_eval([task], FixedPredictor("A"), T.DataSource(str(FIX)), cfg,
                          paper_model="llama 2 7b + bioinstruct")
    m = res["tasks"]["medqa"]["metrics"]
    # golds A, C, B; always "A" -> 1/3.  loglik (shortest option text): C, A(tie), A -> 0/3.
    # per-char normalised: every option scores -1 -> first (A) -> 1/3
    assert m["accuracy"] == pytest.approx(100 / 3)
    assert m["loglik_accuracy"] == 0.0
    assert m["loglik_accuracy_norm"] == pytest.approx(100 / 3)
    assert res["tasks"]["medqa"]["paper"] == 37.25 and res["meta"]["paper_model"] == "LLaMA 2 7B + BioInstruct"
    recs = _lines(tmp_path / "medqa.predictions.jsonl")
    assert [r["gold"] for r in recs] == ["A", "C", "B"] and all(r["pred"] == "A" for r in recs)
    assert recs[0]["loglik_pred"] == "C" and len(recs[0]["loglik"]) == 4
    ex = task.load(T.DataSource(str(FIX)))[0]
    assert recs[0]["prompt"] == format_prompt(task.instruction, task.format_input(ex))  # zero-shot
    assert "Options:\nA. Penicillin\nB. Warfarin" in recs[0]["prompt"]
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["tasks"]["medqa"]["n"] == 3


def test_one_shot_prompt_and_parse_failures(tmp_path):
    cfg = runner.EvalConfig(output_dir=str(tmp_path))
    task = T.get_task("bc5cdr")
    pred = FixedPredictor("")  # empty replies: every example a parse failure
    res = runner.run_eval([task], pred, T.DataSource(str(FIX)), cfg)
    e = res["tasks"]["bc5cdr"]
    assert e["shots"] == 1 and e["parse_failures"] == 3 and e["parse_failure_rate"] == 100.0
    assert e["metrics"]["f1"] == 0.0 and e["metrics"]["recall"] == 0.0
    shot = task.shot(T.DataSource(str(FIX)))
    assert shot.text.startswith("Cisplatin")  # the only training sentence with mentions
    demo = format_prompt(task.instruction, task.format_input(shot)) + "Cisplatin, nephrotoxicity\n\n"
    assert all(p.startswith(demo) for p in pred.generated)
    query = task.load(T.DataSource(str(FIX)))[2]
    assert pred.generated[2].endswith(format_prompt(task.instruction, task.format_input(query)))


def test_resume_skips_done_examples(tmp_path):
    data = T.DataSource(str(FIX))
    cfg = runner.EvalConfig(output_dir=str(tmp_path), batch_size=1)
    task = T.get_task("medqa")
    with pytest.raises(KeyboardInterrupt):
        runner.run_eval([task], FixedPredictor("B", fail_after=1), data, cfg)
    path = tmp_path / "medqa.predictions.jsonl"
    assert [r["generation"] for r in _lines(path)] == ["B"]
    with path.open("a") as f:  # a write cut short by the interruption
        f.write('{"id": "medqa-1", "generation": "C"')
    second = FixedPredictor("C")
    res = runner.run_eval([task], second, data, cfg)
    assert second.calls == 2 and len(second.generated) == 2  # only the two missing examples
    recs = runner.read_predictions(path)
    assert {k: r["pred"] for k, r in recs.items()} == {"medqa-0": "B", "medqa-1": "C", "medqa-2": "C"}
    assert res["tasks"]["medqa"]["n"] == 3 and res["tasks"]["medqa"]["metrics"]["accuracy"] == pytest.approx(100 / 3)
    third = FixedPredictor("D")  # everything done: no model calls at all
    runner.run_eval([task], third, data, cfg)
    assert third.calls == 0 and third.scored == []


def test_refuses_to_mix_settings(tmp_path):
    data = T.DataSource(str(FIX))
    runner.run_eval([T.get_task("medqa")], FixedPredictor(), data, runner.EvalConfig(output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="shots"):
        runner.run_eval([T.get_task("medqa")], FixedPredictor(), data,
                        runner.EvalConfig(output_dir=str(tmp_path), shots=1))


def test_cli_runs_tasks_and_prints_table(tmp_path, capsys):
    user = f"jsonl:{FIX / 'user_task.jsonl'}:exact_match"
    res = main(["--model", "unused-by-the-double", "--tasks", f"medqa,pubmedqa,mts_dialog,chemprot,{user}",
                "--data-dir", str(FIX), "--output", str(tmp_path), "--limit", "2",
                "--paper-model", "LLaMA 2 7B", "--qa-mode", "generate"], predictor=FixedPredictor("yes"))
    out = capsys.readouterr().out
    assert "paper (LLaMA 2 7B)" in out and "30.37" in out and "57.20" in out
    t = res["tasks"]
    assert t["medqa"]["n"] == 2 and t["pubmedqa"]["metrics"]["accuracy"] == 0.0  # golds no, maybe
    assert t["mts_dialog"]["shots"] == 1 and {"rouge1", "rouge2", "rougeL", "bleu"} <= set(t["mts_dialog"]["metrics"])
    assert t["chemprot"]["parse_failure_rate"] == 100.0
    assert t["user_user_task"]["metrics"]["exact_match"] == 0.0
    for name in ("medqa", "pubmedqa", "mts_dialog", "chemprot", "user_user_task"):
        assert (tmp_path / f"{name}.predictions.jsonl").exists()
    assert set(json.loads((tmp_path / "results.json").read_text())["tasks"]) == set(t)
