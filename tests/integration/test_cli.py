"""The commands users run, as subprocesses on tiny inputs: `python -m bioinstruct_jax.train`
(SIGKILL mid-run, then the same command again, ends with the uninterrupted run's weights;
keep_last / keep_best on disk), `python -m bioinstruct_jax.generate` (prints what the predictor
generates), `python -m bioinstruct_jax.eval` (results.json equals scoring its predictions file by
hand with rouge-score / sacrebleu) and `python -m bioinstruct_jax.export` (transformers loads the
merged model with the trained run's logits).

One device per subprocess; the training data is the synthetic task of tests/train_helpers.py with
a SentencePiece tokenizer trained on it, so every process reads only files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO_ROOT
from train_helpers import INSTRUCTION, write_task

STEPS, SAVE_EVERY = 120, 20


def _env() -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO_ROOT)) if p)
    return env


def _module(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"bioinstruct_jax.{name}", *map(str, args)]


def _run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """(train.jsonl, val.jsonl, tokenizer.model) of the synthetic task."""
    from bioinstruct_jax.data.templates import get_template
    from bioinstruct_jax.data.tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("cli_task")
    train_file, val_file, _ = write_task(root / "data", n_train=200, n_val=16)
    template = get_template()
    texts = [template.format_prompt(r["instruction"], r["input"]) + " " + r["output"]
             for r in map(json.loads, train_file.read_text().splitlines())]
    tok = train_sentencepiece(texts, 360, root / "sp")
    return train_file, val_file, tok


def train_command(task, out_dir) -> list[str]:
    train_file, val_file, tok = task
    return _module(
        "train", "model.preset=tiny", "model.vocab_size=null", f"model.tokenizer={tok}",
        "model.param_dtype=float32", "model.dtype=float32",
        "lora.r=8", "lora.alpha=16", "lora.dropout=0.1",  # dropout on: the saved RNG state matters on resume
        f"data.train_file={train_file}", f"data.val_file={val_file}", "data.batch_size=8", "data.max_length=48",
        "optim.lr=0.01", "optim.warmup_steps=10",
        f"train.output_dir={out_dir}", f"train.steps={STEPS}", f"train.save_every={SAVE_EVERY}",
        f"train.eval_every={SAVE_EVERY}", "train.eval_batches=2", "train.keep_last=2", "train.keep_best=1",
        "train.log_every=1", "train.tensorboard=false", "train.plot=false", "train.progress_bar=false",
        "mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1")


@pytest.fixture(scope="module")
def trained(task, tmp_path_factory):
    """An uninterrupted CLI training run."""
    out = tmp_path_factory.mktemp("cli_run") / "run"
    proc = _run(train_command(task, out))
    assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == STEPS
    return out


def _steps_on_disk(run_dir) -> set[int]:
    return {int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()}


def _val_losses(run_dir) -> dict[int, float]:
    from bioinstruct_jax.train.metrics import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "val"}


def _lora_weights(run_dir, step: int) -> list[np.ndarray]:
    import jax
    import orbax.checkpoint as ocp

    from bioinstruct_jax.checkpoint.orbax import RunCheckpointer

    ckpt = RunCheckpointer(str(run_dir), read_only=True)
    try:
        restored = ckpt.manager.restore(step, args=ocp.args.Composite(lora=ocp.args.StandardRestore()))
    finally:
        ckpt.close()
    return [np.asarray(x) for x in jax.tree.leaves(restored.lora)]


def test_train_cli_keeps_last_and_best_checkpoints(trained):
    """keep_last=2, keep_best=1: on disk are the two newest checkpoints plus the one with the lowest
    validation loss (read from metrics.jsonl, not from the checkpoint manager)."""
    val = _val_losses(trained)
    saved = set(range(SAVE_EVERY, STEPS + 1, SAVE_EVERY))
    assert set(val) == saved
    best = min(saved, key=val.__getitem__)
    assert _steps_on_disk(trained) == {STEPS - SAVE_EVERY, STEPS, best}


@pytest.mark.slow
def test_train_cli_sigkill_then_same_command_ends_with_the_same_weights(task, trained, tmp_path):
    """SIGKILL the training command once a checkpoint exists, run the same command again: it resumes
    and ends with the uninterrupted run's LoRA weights and losses, bitwise (CPU)."""
    out = tmp_path / "run"
    cmd = train_command(task, out)
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    first = out / "checkpoints" / str(SAVE_EVERY)
    start = time.time()
    while not first.is_dir():  # a step folder exists only once Orbax has finalised it
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() - start < 600, "no checkpoint after 600 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(_steps_on_disk(out))
    assert killed_at < STEPS, "the run finished before it was killed"

    again = _run(cmd)
    assert json.loads(again.stdout.strip().splitlines()[-1])["step"] == STEPS
    ref, got = _lora_weights(trained, STEPS), _lora_weights(out, STEPS)
    assert len(ref) == len(got) > 0
    assert all(np.array_equal(a, b) for a, b in zip(ref, got))
    assert _val_losses(out) == _val_losses(trained)
    assert _steps_on_disk(out) == _steps_on_disk(trained)


def test_generate_cli_prints_the_predictors_text(trained):
    """The CLI renders each --prompt in the run's own template (alpaca here), then generates as the
    predictor does; `--template raw` sends the text as it is."""
    from bioinstruct_jax.data.templates import render_prompt
    from bioinstruct_jax.infer.predictor import load_predictor

    pred = load_predictor(str(trained))
    assert pred.template == "alpaca"  # read from the run's saved config
    questions = [f"{INSTRUCTION}\n\ns1 s1 s5 s1 s1", "What is metformin?"]
    expected = pred.generate([render_prompt(pred.template, q) for q in questions], max_new_tokens=5)
    assert any(text.strip() for text in expected)
    proc = _run(_module("generate", "--model", trained, "--prompt", questions[0], "--prompt", questions[1],
                        "--max-new-tokens", "5", "--jsonl", "--no-escape"))
    lines = [json.loads(x) for x in proc.stdout.strip().splitlines()]
    assert lines == [{"prompt": q, "generation": g} for q, g in zip(questions, expected)]
    raw = render_prompt("alpaca", questions[0])
    proc = _run(_module("generate", "--model", trained, "--prompt", raw, "--template", "raw",
                        "--max-new-tokens", "5", "--jsonl", "--no-escape"))
    assert json.loads(proc.stdout.strip()) == {"prompt": raw, "generation": expected[0]}


def _score_by_hand(preds: list[dict]) -> dict[str, float]:
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    hand = {k: 100 * float(np.mean([scorer.score(p["gold"], p["generation"])[k].fmeasure for p in preds]))
            for k in ("rouge1", "rouge2", "rougeL")}
    hand["bleu"] = sacrebleu.corpus_bleu([p["generation"] for p in preds], [[p["gold"] for p in preds]]).score
    return hand


def test_eval_cli_results_equal_scoring_its_predictions_by_hand(task, trained, tmp_path):
    """results.json holds rouge-score's ROUGE-1/2/L (stemmed, mean F1 x 100) and sacrebleu's corpus BLEU
    of the predictions file. The tiny run's answers miss the golds (all scores 0), so the file is then
    edited (golds overlapping the generations) and the same command, which resumes from the file
    without generating, must rescore it."""
    _, val_file, _ = task
    out = tmp_path / "eval"
    cmd = _module("eval", "--model", trained, "--tasks", f"jsonl:{val_file}:rouge", "--output", out,
                  "--limit", "8", "--max-new-tokens", "6")
    _run(cmd)
    val = [json.loads(x) for x in val_file.read_text().splitlines()]
    for edit in (False, True):
        results = json.loads((out / "results.json").read_text())
        (name, entry), = results["tasks"].items()
        pred_file = out / f"{name}.predictions.jsonl"
        preds = [json.loads(x) for x in pred_file.read_text().splitlines()]
        assert entry["n"] == len(preds) == 8
        if not edit:
            assert [p["gold"] for p in preds] == [r["output"] for r in val[:8]]
            assert all(p["generation"].strip() for p in preds)
        hand = _score_by_hand(preds)
        for key, value in hand.items():
            assert entry["metrics"][key] == pytest.approx(value, abs=1e-9), (key, edit)
        if edit:
            assert 0 < hand["rougeL"] < 100 and hand["rouge1"] != hand["rouge2"]
        else:  # partial overlaps: half the golds start with the generation, a quarter equal it
            for i, p in enumerate(preds):
                p["gold"] = p["generation"] if i % 4 == 0 else f"{p['generation']} {p['gold']} x" if i % 2 else p["gold"]
            pred_file.write_text("".join(json.dumps(p) + "\n" for p in preds))
            _run(cmd)


def test_export_cli_merged_model_loads_in_transformers_with_the_runs_logits(trained, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import jax.numpy as jnp

    from bioinstruct_jax.checkpoint.restore import restore_run

    out = tmp_path / "merged"
    _run(_module("export", "--checkpoint", trained, "--out", out, "--format", "merged"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok(f"{INSTRUCTION} s2 s7 s2 s2 s2", return_tensors="np")["input_ids"]
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids)).logits.numpy()
    model = restore_run(str(trained)).model
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), theirs, atol=1e-4, rtol=1e-4)
