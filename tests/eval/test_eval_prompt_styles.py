"""`--prompt-style` through the eval CLI with a test double (the prompts and continuations it is
asked to score, the metrics and what results.json records), and the batched choice scorer
(infer/choice_scoring.py) against row-by-row scoring on a tiny model."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from bioinstruct_jax.eval import tasks as T
from bioinstruct_jax.eval.__main__ import main

FIX = pathlib.Path(__file__).parents[1] / "fixtures" / "eval"


class ChoiceDouble:
    """Scores a continuation by minus its length in characters; records what it was asked."""

    def __init__(self):
        self.asked: list[tuple[str, list[str]]] = []

    def generate(self, prompts, *, max_new_tokens, stop=None):
        return ["The answer is a condition that"] * len(prompts)

    def score(self, prompts, continuations):
        raise AssertionError("score_choices is used when the predictor has it")

    def score_choices(self, contexts, continuations):
        self.asked += list(zip(contexts, continuations))
        return [[-float(len(c)) for c in conts] for conts in continuations]


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_lm_eval_style_prompts_choices_and_results(tmp_path, capsys):
    pred = ChoiceDouble()
    res = main(["--model", "unused", "--tasks", "medqa,medmcqa,pubmedqa", "--data-dir", str(FIX),
                "--output", str(tmp_path), "--qa-mode", "loglik", "--prompt-style", "lm-eval"], predictor=pred)
    ex = T.get_task("medqa").load(T.DataSource(str(FIX)))[0]
    want = (f"Question: {ex.text}\n" + "".join(f"{k}. {v}\n" for k, v in ex.options.items()) + "Answer:")
    assert pred.asked[0] == (want, [" A", " B", " C", " D"])
    mm = T.get_task("medmcqa").load(T.DataSource(str(FIX)))[0]
    assert any(c.startswith(f"Question: {mm.text}\nChoices:\nA. ") and c.endswith("\nAnswer:") for c, _ in pred.asked)
    pq = [c for c, conts in pred.asked if conts == [" yes", " no", " maybe"]]
    assert pq and pq[0].startswith("Abstract: ") and "\nQuestion: " in pq[0] and "Background:" not in pq[0]
    assert res["meta"]["prompt_style"] == "lm-eval"
    t = res["tasks"]
    assert t["pubmedqa"]["prompt_style"] == "lm-eval" and t["medqa"]["lm_eval"]["task"] == "medqa_4options"
    # pubmedqa: raw loglik -len(" no") is highest -> "no"; acc_norm divides by len("yes"/"no"/"maybe"):
    # -4/3, -3/2, -6/5 -> maybe (lm-eval: len(choice) without the delimiter)
    recs = _lines(tmp_path / "pubmedqa.predictions.jsonl")
    assert all(r["loglik"] == [-4.0, -3.0, -6.0] and r["loglik_pred"] == "no" and r["loglik_pred_norm"] == "maybe"
               for r in recs)
    golds = [r["gold"] for r in recs]
    assert t["pubmedqa"]["lm_eval"]["acc"] == pytest.approx(100 * golds.count("no") / len(golds))
    assert t["pubmedqa"]["lm_eval"]["acc_norm"] == pytest.approx(100 * golds.count("maybe") / len(golds))
    assert json.loads((tmp_path / "pubmedqa.run.json").read_text())["prompt_style"] == "lm-eval"
    out = capsys.readouterr().out
    assert "baselines on the same items: majority" in out and "log-likelihood: accuracy" in out


def test_cloze_scores_option_texts_without_the_option_list(tmp_path):
    pred = ChoiceDouble()
    res = main(["--model", "unused", "--tasks", "medqa", "--data-dir", str(FIX), "--output", str(tmp_path),
                "--qa-mode", "both", "--prompt-style", "cloze"], predictor=pred)
    ex = T.get_task("medqa").load(T.DataSource(str(FIX)))[0]
    assert pred.asked[0] == (f"Question: {ex.text}\nAnswer:", [" " + v for v in ex.options.values()])
    rec = _lines(tmp_path / "medqa.predictions.jsonl")[0]
    assert rec["loglik_prompt"] == f"Question: {ex.text}\nAnswer:" and "Options:" in rec["prompt"]
    # per-character normalisation: every option scores -(len+1)/len; the shortest option has the lowest
    lengths = [len(v) for v in ex.options.values()]
    assert rec["loglik_pred_norm"] == "ABCD"[int(np.argmax([-(n + 1) / n for n in lengths]))]
    d = res["tasks"]["medqa"]["diagnostics"]
    assert d["generate"]["unreadable"] == 3  # "The answer is a condition that" is not A
    assert set(d) == {"generate", "loglik", "loglik_norm"}


def test_lm_eval_style_refuses_tasks_without_an_lm_eval_counterpart(tmp_path):
    with pytest.raises(ValueError, match="chemprot.*no lm-evaluation-harness counterpart"):
        main(["--model", "unused", "--tasks", "chemprot", "--data-dir", str(FIX), "--output", str(tmp_path),
              "--qa-mode", "loglik", "--prompt-style", "lm-eval"], predictor=ChoiceDouble())


def test_choice_scorer_single_and_multi_token_paths_match_row_scoring(tmp_path):
    pytest.importorskip("torch", reason="the tiny model is written by transformers")
    from bioinstruct_jax.checkpoint.hf import load_pretrained
    from bioinstruct_jax.infer.choice_scoring import ChoiceScorer
    from bioinstruct_jax.infer.engine import Generator
    from hf_fixtures import write_tiny_llama

    write_tiny_llama(tmp_path, "gqa_tied", initializer_range=0.3)
    model, _ = load_pretrained(tmp_path, dtype="float32")
    model.eval()
    gen = Generator(model, max_batch_size=4, pad_id=0)
    rng = np.random.default_rng(0)
    contexts = [list(rng.integers(3, 128, size=n)) for n in (5, 17, 9, 30, 2)]
    single = [[[7], [9], [11], [13]] for _ in contexts]
    multi = [[[7, 8], [9], [11, 12, 13]] for _ in contexts]
    # single-token items: one row per item; multi-token ones share the context's forward (one
    # context row per item) unless context + longest choice exceeds max_length (here the
    # 30-token context with max_length 32: one cut row per choice, as the reference cuts them)
    short = Generator(model, max_batch_size=4, pad_id=0, max_length=32)
    # share_context=False (the benchmark's reference layout): one row per (context, choice)
    for g, choices, rows, share in ((gen, single, 5, True), (gen, multi, 5, True), (short, multi, 4 + 3, True),
                                    (gen, multi, 3 * 5, False)):
        got = ChoiceScorer(g, share_context=share).score(contexts, choices)
        assert got.forward_rows == rows
        flat = g.score_continuations([c for c, ch in zip(contexts, choices) for _ in ch],
                                     [x for ch in choices for x in ch])
        assert np.allclose([x for s in got.scores for x in s], flat, atol=1e-5)


def test_choice_scorer_with_a_sliding_window_matches_row_scoring(tmp_path):
    """Mistral's window (4 tokens here) counts positions; the shared prefill's cache would count
    slots across the context's padding, so such a model's items go through the per-choice rows."""
    pytest.importorskip("torch", reason="the tiny model is written by transformers")
    from bioinstruct_jax.checkpoint.hf import load_pretrained
    from bioinstruct_jax.infer.choice_scoring import ChoiceScorer
    from bioinstruct_jax.infer.engine import Generator
    from family_fixtures import write_tiny_family

    write_tiny_family(tmp_path, "mistral")
    model, _ = load_pretrained(tmp_path, dtype="float32")
    model.eval()
    gen = Generator(model, max_batch_size=4, pad_id=0)
    rng = np.random.default_rng(1)
    contexts = [list(rng.integers(3, 128, size=n)) for n in (5, 17, 9)]
    multi = [[[7, 8], [9], [11, 12, 13]] for _ in contexts]
    got = ChoiceScorer(gen).score(contexts, multi)
    flat = gen.score_continuations([c for c in contexts for _ in range(3)], [x for ch in multi for x in ch])
    assert np.allclose([x for s in got.scores for x in s], flat, atol=1e-5)
