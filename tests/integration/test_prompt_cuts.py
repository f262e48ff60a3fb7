"""Every cut said out loud, through the commands: `generate`, `eval` and `train` print one `note:`
line per command with how many prompts lost how many tokens and from where, and eval's
results.json records how many items were cut. The expected counts come from the tokenizer alone
(prompt length against the model's context less the room for new tokens); a tiny random HF LLaMA
(context 256) and a SentencePiece tokenizer trained here."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
ENV = {**{k: v for k, v in os.environ.items() if k != "BIOINSTRUCT_DEBUG"},
       "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
CONTEXT = 256  # the tiny model's max_position_embeddings
NEW_SLOTS = 16  # --max-new-tokens 4 is rounded up to the engine's smallest new-token bucket
LONG = " ".join(f"w{i % 37} s{i % 5}" for i in range(400))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from hf_fixtures import write_tiny_llama
    from bioinstruct_jax.data.tokenizer import train_sentencepiece
    from train_helpers import write_task

    root = tmp_path_factory.mktemp("cuts")
    write_tiny_llama(root / "hf", vocab_size=300, max_position_embeddings=CONTEXT)
    train_file, val_file, _ = write_task(root / "data", 32, 8)
    texts = [line for f in (train_file, val_file) for line in f.read_text().splitlines()] + [LONG]
    sp = train_sentencepiece(texts, 300, root / "tok")
    return {"root": root, "hf": root / "hf", "sp": sp, "train": train_file, "val": val_file}


def _run(args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _notes(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("note:")]


def _tokens(sp, text: str) -> int:
    from bioinstruct_jax.data.tokenizer import load_tokenizer_files

    tok = load_tokenizer_files(sp)
    return len(tok.encode(text, add_bos=bool(getattr(tok, "adds_bos", True))))


def test_generate_says_once_how_many_tokens_it_cut(assets):
    long_prompt = f"Summarise: {LONG}"
    proc = _run(["-m", "bioinstruct_jax.generate", "--model", assets["hf"], "--tokenizer", assets["sp"],
                 "--prompt", long_prompt, "--prompt", "short one", "--prompt", long_prompt + " more",
                 "--max-new-tokens", "4", "--jsonl"])
    dropped = [_tokens(assets["sp"], p) - (CONTEXT - NEW_SLOTS) for p in (long_prompt, long_prompt + " more")]
    assert all(d > 0 for d in dropped)
    notes = _notes(proc)
    assert len(notes) == 1, proc.stderr[-3000:]
    assert notes[0].startswith(f"note: 2 of 3 prompts were cut to fit the context (max_length={CONTEXT}")
    assert f"{sum(dropped):,} tokens dropped from their beginnings (at most {max(dropped):,} from one)" in notes[0]
    assert len(proc.stdout.strip().splitlines()) == 3
    # nothing cut, nothing said
    assert not _notes(_run(["-m", "bioinstruct_jax.generate", "--model", assets["hf"], "--tokenizer", assets["sp"],
                            "--prompt", "short one", "--max-new-tokens", "4"]))


def test_eval_records_cut_items_in_results_and_says_so_once(assets, tmp_path):
    data = tmp_path / "task.jsonl"
    rows = [{"instruction": "Answer.", "input": "s1 s2", "output": "S1"},
            {"instruction": "Answer.", "input": LONG, "output": "S2"},
            {"instruction": "Answer.", "input": "s3", "output": "S3"},
            {"instruction": "Answer.", "input": LONG + " s4", "output": "S4"},
            {"instruction": "Answer.", "input": "s0 s4", "output": "S0"},
            {"instruction": "Answer.", "input": LONG + " s0", "output": "S0"}]  # one of six is the held-out shot pool
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    proc = _run(["-m", "bioinstruct_jax.eval", "--model", assets["hf"], "--predictor-arg", f"tokenizer={assets['sp']}",
                 "--tasks", f"jsonl:{data}:exact_match", "--output", out, "--max-new-tokens", "4", "--shots", "0",
                 "--batch-size", "2"])
    (name, entry), = json.loads((out / "results.json").read_text())["tasks"].items()
    preds = [json.loads(line) for line in (out / f"{name}.predictions.jsonl").read_text().splitlines()]
    expected = {p["id"]: max(_tokens(assets["sp"], p["prompt"]) - (CONTEXT - NEW_SLOTS), 0) for p in preds}
    n_cut = sum(v > 0 for v in expected.values())
    assert len(preds) == 5 and 2 <= n_cut <= 3
    assert {p["id"]: p.get("prompt_tokens_cut", 0) for p in preds} == expected
    assert entry["prompts_cut"] == n_cut and entry["prompt_tokens_cut"] == sum(expected.values())
    notes = [n for n in _notes(proc) if "cut" in n]
    assert len(notes) == 1, proc.stderr[-3000:]
    assert f"{name} {n_cut} of 5 items ({sum(expected.values()):,} tokens)" in notes[0]


def test_train_says_once_how_many_examples_it_cut(assets, tmp_path):
    from bioinstruct_jax.data.templates import get_template
    from bioinstruct_jax.data.tokenizer import load_tokenizer_files
    from train_helpers import tiny_overrides

    records = [json.loads(line) for line in assets["train"].read_text().splitlines()]
    records[3]["input"] = LONG
    records[7]["input"] = LONG + " s1"
    records[9]["output"] = LONG  # even the response does not fit
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records))
    max_length = 384
    proc = _run(["-m", "bioinstruct_jax.train", *tiny_overrides(
        tmp_path / "run", train, assets["val"], **{"model.tokenizer": assets["sp"], "train.steps": 1,
                                                   "train.save_every": 0, "data.max_length": max_length})])
    tok, template = load_tokenizer_files(assets["sp"]), get_template()
    bos = 1 if getattr(tok, "adds_bos", True) else 0
    over = [len(tok.encode(template.head(r["instruction"], r["input"]))) + len(tok.encode(template.tail()))
            + bos + len(tok.encode(r["output"])) + 1 - (max_length + 1) for i, r in enumerate(records) if i != 9]
    over = [n for n in over if n > 0]
    assert len(over) == 2  # the two long inputs, nothing else
    notes = _notes(proc)
    assert len(notes) == 1, proc.stderr[-3000:]
    assert notes[0].startswith(f"note: 2 of {len(records)} training examples had their prompt cut to fit "
                               f"data.max_length={max_length}: {sum(over):,} tokens dropped from the end of the "
                               f"instruction / input")
    assert f"(at most {max(over):,} from one)" in notes[0]
    assert f"1 of {len(records)} training examples are left out" in notes[0]
