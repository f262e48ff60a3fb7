"""Shared helpers of the training tests: a synthetic instruction task and a word-level tokenizer."""

from __future__ import annotations

import json
import pathlib
import random

from bioinstruct_jax.data.templates import get_template

SYMBOLS = [f"s{i}" for i in range(8)]
PARTNER = {s: s.upper() for s in SYMBOLS}
INSTRUCTION = "Write the most frequent symbol in capitals."


class WordTokenizer:
    """Whitespace tokenizer over a fixed word list: <pad>=0, <s>=1, </s>=2, <unk>=3."""

    def __init__(self, words):
        self.pieces = ["<pad>", "<s>", "</s>", "<unk>"] + sorted(set(words))
        self.index = {w: i for i, w in enumerate(self.pieces)}
        self.bos_id, self.eos_id, self.pad_id, self.vocab_size = 1, 2, 0, len(self.pieces)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, 3) for w in text.split()]

    def decode(self, ids) -> str:
        return " ".join(self.pieces[i] for i in ids)

    def id_to_piece(self, i: int) -> str:
        return self.pieces[i]


def task_records(n: int, seed: int) -> list[dict[str, str]]:
    """Five symbols in, one of them four times; out: that symbol capitalised (a fixed transform).

    Chosen over "copy every symbol" because a LoRA on a *random* 2-layer base learns it steadily
    (the majority symbol dominates even uniform attention, so no positional head has to form
    first); copying plateaus at chance for a seed-dependent number of steps.
    """
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        major, other = rnd.sample(SYMBOLS, 2)
        xs = [major] * 4 + [other]
        rnd.shuffle(xs)
        out.append({"instruction": INSTRUCTION, "input": " ".join(xs), "output": PARTNER[major]})
    return out


def write_task(directory: pathlib.Path, n_train: int = 200, n_val: int = 50):
    """train.jsonl / val.jsonl with disjoint inputs, and the tokenizer covering them."""
    recs = task_records(4 * (n_train + n_val), seed=0)
    seen, uniq = set(), []
    for r in recs:
        if r["input"] not in seen:
            seen.add(r["input"])
            uniq.append(r)
    train, val = uniq[:n_train], uniq[n_train:n_train + n_val]
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("val.jsonl", val)):
        (directory / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    template = get_template()
    words = (template.format_prompt(INSTRUCTION, "x") + template.format_prompt(INSTRUCTION)).split()
    words += SYMBOLS + list(PARTNER.values())
    return directory / "train.jsonl", directory / "val.jsonl", WordTokenizer(words)


def tiny_overrides(out_dir, train_file, val_file, **extra) -> list[str]:
    """key=value overrides of a small, fast f32 run on the synthetic task."""
    base = {
        "model.preset": "tiny", "model.param_dtype": "float32", "model.dtype": "float32",
        "lora.r": 16, "lora.alpha": 32, "lora.dropout": 0.0,
        "lora.target_regex": "(layers/\\d+/(self_attn|mlp)/\\w+_proj)|lm_head",
        "data.train_file": str(train_file), "data.val_file": str(val_file),
        "data.batch_size": 16, "data.max_length": 48,
        "optim.lr": 0.01, "optim.warmup_steps": 10, "optim.grad_clip": 1.0,
        "train.output_dir": str(out_dir), "train.steps": 150, "train.log_every": 1, "train.eval_every": 0,
        "train.save_every": 50, "train.tensorboard": False, "train.plot": False, "train.progress_bar": False,
        "mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": 1,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def slow_factory(cfg, tokenizer, delay: float):
    """The run's data factory with a pause per training batch (keeps a subprocess alive long enough to kill)."""
    import time

    from bioinstruct_jax.train.loop import run_data_factory

    inner = run_data_factory(cfg, tokenizer)

    class Slow:
        def __init__(self, it):
            self.it = it

        def __iter__(self):
            return self

        def __next__(self):
            time.sleep(delay)
            return next(self.it)

        def get_state(self):
            return self.it.get_state()

        def set_state(self, state):
            self.it.set_state(state)

    def factory(split):
        it = inner(split)
        return Slow(it) if split == "train" else it

    return factory


if __name__ == "__main__":  # python tests/train_helpers.py DATA_DIR OUT_DIR DELAY key=value ...
    import sys

    from bioinstruct_jax.config import load_run_config
    from bioinstruct_jax.train.loop import run

    data_dir, out_dir, delay = pathlib.Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    train_file, val_file, tok = write_task(data_dir)
    cfg = load_run_config(None, tiny_overrides(out_dir, train_file, val_file) + sys.argv[4:])
    result = run(cfg, tokenizer=tok, data_factory=slow_factory(cfg, tok, delay), verbose=False)
    print("RESULT " + json.dumps({"step": result.step, "preempted": result.preempted}), flush=True)
