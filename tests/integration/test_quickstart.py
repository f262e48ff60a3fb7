"""The README's first command, shortened: `python -m bioinstruct_jax.quickstart --tiny` with a few
steps (the random tiny LLaMA stands in for SmolLM2; tests/integration/test_readme_commands.py runs the real one
when it is installed).

Every stage's artifact is checked by something other than the code that wrote it: the Orbax
checkpoint restores, the eval CLI's results.json files score the held-out seeds before and after,
the before/after table is made of those two, the merged export loads in transformers with the
trained model's logits, and the adapter's config reads in peft.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from bioinstruct_jax.jobs import quickstart

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def test_quickstart_trains_checkpoints_evaluates_and_exports(tmp_path, capsys):
    out = tmp_path / "qs"
    (out / "run" / "stale").mkdir(parents=True)  # a previous run's leftovers are cleared, not resumed
    (out / "notes.txt").write_text("mine")  # anything else under --out is left alone
    rc = quickstart.main(["--tiny", "--out", str(out), "--eval-limit", "2", "train.steps=4", "train.eval_every=2",
                          "train.save_every=2", "train.log_every=1", "data.max_length=128"])
    assert rc == 0
    captured = capsys.readouterr()
    printed = captured.out
    for stage in ("[model]", "[data]", "[before]", "[train]", "[after]", "[results]", "[export]"):
        assert stage in printed
    assert not (out / "run" / "stale").exists()
    assert (out / "notes.txt").read_text() == "mine"

    # train: metrics for every step, a checkpoint at the last step, the loss curve
    steps = [json.loads(line)["step"] for line in (out / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line).get("split", "train") == "train"]
    assert max(steps) == 4
    assert (out / "run" / "loss_curve.png").stat().st_size > 0
    from bioinstruct_jax.checkpoint.restore import restore_run

    run = restore_run(str(out / "run"))
    model, cfg, tok_path = run.model, run.config, run.tokenizer
    assert cfg.train.steps == 4 and tok_path == str(out / "tokenizer" / "tokenizer.model")

    # eval: the held-out split of the seeds, scored before and after, one prediction per example
    table = json.loads((out / "results.json").read_text())
    rows = {(r["task"], r["metric"]): r for r in table["rows"]}
    assert set(rows) == {("user_heldout_seeds", "rougeL"), ("user_heldout_seeds", "bleu")}
    for side in ("before", "after"):
        results = json.loads((out / "eval" / side / "results.json").read_text())
        task = results["tasks"]["user_heldout_seeds"]
        assert task["n"] == 2 and set(task["metrics"]) >= {"rougeL", "bleu"}
        preds = (out / "eval" / side / "user_heldout_seeds.predictions.jsonl").read_text().splitlines()
        assert len(preds) == 2
        for metric in ("rougeL", "bleu"):
            row = rows[("user_heldout_seeds", metric)]
            assert row["n"] == 2 and row[side]["value"] == pytest.approx(task["metrics"][metric])
    assert "user_heldout_seeds" in printed and "delta (95% CI)" in printed
    assert (out / "before_after.png").stat().st_size > 0
    # each "after" prediction is what the trained run generates for its prompt, called directly
    from bioinstruct_jax.eval.runner import stop_strings
    from bioinstruct_jax.infer.predictor import load_predictor

    preds = [json.loads(line) for line in
             (out / "eval" / "after" / "user_heldout_seeds.predictions.jsonl").read_text().splitlines()]
    direct = load_predictor(str(out / "run"), batch_size=8).generate(
        [p["prompt"] for p in preds], max_new_tokens=48, stop=stop_strings())
    assert [p["generation"] for p in preds] == direct
    heldout = [json.loads(line)["id"] for line in (out / "data" / "heldout_seeds.jsonl").read_text().splitlines()]
    from bioinstruct_jax.data.pipeline import load_split

    trained_on = {r["id"] for r in load_split(cfg.data, "train")}
    assert heldout and not set(heldout) & trained_on
    assert "Given directory is read only" not in captured.err

    # export: transformers reads the merged model and tokenizer; logits equal the trained model's
    merged = out / "export" / "merged"
    hf = transformers.AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(merged)
    ids = hf_tok("Summarise the patient's question.", return_tensors="np")["input_ids"]
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), theirs, atol=1e-4, rtol=1e-4)
    adapter = peft.PeftConfig.from_pretrained(out / "export" / "peft")
    assert adapter.r == cfg.lora.r and adapter.peft_type == "LORA"
