"""The embedded default main job: `python -m bioinstruct_jax.quickstart [--out DIR] [key=value ...]`.

On a fresh CPU-only machine, in a few minutes, the whole path end to end:
  1. tokenizer: SentencePiece trained on the 80 bundled seed tasks;
  2. train: the tiny LLaMA of `configs/tiny.yaml` LoRA-tuned on the seeds' training split
     (Orbax checkpoints, metrics JSONL, TensorBoard events, loss curve);
  3. eval: `python -m bioinstruct_jax.eval` on the seeds' held-out split (the pipeline's
     validation split, as a `jsonl:` user task: ROUGE-L / BLEU of greedy generations);
  4. export: the last checkpoint as a merged HF LLaMA directory and as a PEFT adapter.
Each stage prints where its artifacts went. Running it again with the same --out starts over
(its own tokenizer/run/eval/export folders are replaced; nothing else under --out is touched).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import time
from typing import Sequence

from bioinstruct_jax import cli_errors

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"
SEEDS = REPO / "seeds" / "bioinstruct_seeds.jsonl"
STAGE_DIRS = ("tokenizer", "run", "eval", "export")  # what a quickstart writes under --out


def train_tokenizer(out_dir: pathlib.Path, vocab_size: int = 512) -> pathlib.Path:
    """SentencePiece on the seeds' instruction/input/output texts -> out_dir/tokenizer.model."""
    from bioinstruct_jax.data.seeds import load_seeds
    from bioinstruct_jax.tokenizer import train_sentencepiece

    texts = [t for r in load_seeds(SEEDS) for t in (r.instruction, r.input, r.output) if t]
    return pathlib.Path(train_sentencepiece(texts, vocab_size, out_dir))


def write_heldout(cfg, path: pathlib.Path) -> int:
    """The run's validation records (never trained on) as instruction/input/output JSONL."""
    from bioinstruct_jax.data.pipeline import load_split

    records = list(load_split(cfg.data, "validation"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({k: r.get(k, "") for k in ("id", "instruction", "input", "output")}) + "\n"
                            for r in records), encoding="utf-8")
    return len(records)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bioinstruct_jax.quickstart", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/quickstart", help="output directory (default runs/quickstart)")
    p.add_argument("--eval-limit", type=int, default=8, help="held-out seeds to generate for (default 8)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of configs/tiny.yaml")
    cli_errors.add_debug_argument(p)
    args = p.parse_args(argv)
    start = time.perf_counter()
    out = pathlib.Path(args.out).resolve()
    for stage in STAGE_DIRS:  # a fresh run each time (a kept run dir would resume instead of train);
        shutil.rmtree(out / stage, ignore_errors=True)  # only what the quickstart itself writes goes
    from bioinstruct_jax import export, train
    from bioinstruct_jax.config import load_run_config
    from bioinstruct_jax.eval.__main__ import main as eval_main

    tok_path = train_tokenizer(out / "tokenizer")
    print(f"[tokenizer] SentencePiece trained on {SEEDS.name}: {tok_path}")
    cfg = load_run_config(TINY_CONFIG, [f"model.tokenizer={tok_path}", f"train.output_dir={out / 'run'}",
                                        f"data.train_file={SEEDS}", *args.overrides])
    result = train.run(cfg)
    print(f"[train] {result.step} steps, final train loss {result.final_loss:.3f}, validation loss "
          f"{'n/a' if result.val_loss is None else f'{result.val_loss:.3f}'}")
    print(f"[train] checkpoints: {result.checkpoint_dir}")
    print(f"[train] metrics: {result.metrics_path}  tensorboard: {out / 'run' / 'tensorboard'}")
    print(f"[train] loss curve: {result.loss_curve}")

    eval_dir = out / "eval"
    heldout = eval_dir / "heldout_seeds.jsonl"
    n = write_heldout(cfg, heldout)
    eval_main(["--model", str(out / "run"), "--tasks", f"jsonl:{heldout}:rouge", "--output", str(eval_dir),
               "--limit", str(args.eval_limit), "--max-new-tokens", "64", "--batch-size", "8"])
    print(f"[eval] held-out seeds ({n} records, one kept aside as the task's shot pool): {heldout}")
    print(f"[eval] predictions and results.json: {eval_dir}")

    exported = export.export_checkpoint(str(out / "run"), str(out / "export"), fmt="both", overwrite=True)
    print(f"[export] merged HF LLaMA (transformers): {exported / 'merged'}")
    print(f"[export] PEFT LoRA adapter (peft): {exported / 'peft'}")
    print(json.dumps({"output": str(out), "seconds": round(time.perf_counter() - start, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(cli_errors.run(main))
