"""The embedded default main job: `python -m bioinstruct_jax.quickstart [--out DIR]`.

On a fresh CPU-only machine, in a few minutes: train a SentencePiece tokenizer on the 80 bundled
seed tasks, LoRA-tune the tiny LLaMA of `configs/tiny.yaml` on them (checkpointed with Orbax),
then evaluate and export it with the project's eval / export modules where those exist. Each
stage prints where its artifact went.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys
import time
from typing import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"
SEEDS = REPO / "seeds" / "bioinstruct_seeds.jsonl"


def _optional(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and name.startswith(err.name):
            return None
        raise


def train_tokenizer(out_dir: pathlib.Path, vocab_size: int = 512) -> pathlib.Path:
    """SentencePiece on the seeds' instruction/input/output texts -> out_dir/tokenizer.model."""
    from bioinstruct_jax.data.seeds import load_seeds

    texts = [t for r in load_seeds(SEEDS) for t in (r.instruction, r.input, r.output) if t]
    tok_mod = _optional("bioinstruct_jax.tokenizer")
    out_dir.mkdir(parents=True, exist_ok=True)
    if tok_mod is not None and hasattr(tok_mod, "train_sentencepiece"):
        result = tok_mod.train_sentencepiece(texts, vocab_size, str(out_dir))
        path = pathlib.Path(result) if isinstance(result, (str, pathlib.Path)) else out_dir / "tokenizer.model"
        return path if path.is_file() else out_dir
    import sentencepiece as spm  # interim, until bioinstruct_jax.tokenizer lands

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(out_dir / "tokenizer"), vocab_size=vocab_size,
        model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True,
        character_coverage=1.0, minloglevel=2)
    return out_dir / "tokenizer.model"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bioinstruct_jax.quickstart", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/quickstart", help="output directory (default runs/quickstart)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of configs/tiny.yaml")
    args = p.parse_args(argv)
    start = time.perf_counter()
    out = pathlib.Path(args.out).resolve()
    from bioinstruct_jax import train
    from bioinstruct_jax.config import load_run_config

    tok_path = train_tokenizer(out / "tokenizer")
    print(f"[tokenizer] SentencePiece trained on {SEEDS.name}: {tok_path}")
    cfg = load_run_config(TINY_CONFIG if TINY_CONFIG.is_file() else None,
                          [f"model.tokenizer={tok_path}", f"train.output_dir={out / 'run'}",
                           f"data.train_file={SEEDS}", *args.overrides])
    result = train.run(cfg)
    print(f"[train] {result.step} steps, final train loss {result.final_loss:.3f}, "
          f"validation loss {result.val_loss if result.val_loss is None else round(result.val_loss, 3)}")
    print(f"[train] checkpoints: {result.checkpoint_dir}")
    print(f"[train] metrics: {result.metrics_path}  tensorboard: {out / 'run' / 'tensorboard'}")
    print(f"[train] loss curve: {result.loss_curve}")

    evaluate = _optional("bioinstruct_jax.generate")
    quick_eval = getattr(_optional("bioinstruct_jax.eval.quickstart") or object(), "run_quick_eval", None)
    if evaluate is not None and quick_eval is not None:
        path = quick_eval(str(out / "run"), str(out / "eval"))
        print(f"[eval] results: {path}")
    else:
        print("[eval] skipped: the generation/eval entry for checkpoints has not landed yet")

    export = _optional("bioinstruct_jax.export")
    if export is not None and hasattr(export, "export_checkpoint"):
        path = export.export_checkpoint(str(out / "run"), str(out / "export"))
        print(f"[export] HF model: {path}")
    else:
        print("[export] skipped: bioinstruct_jax.export has not landed yet")
    print(json.dumps({"output": str(out), "seconds": round(time.perf_counter() - start, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
