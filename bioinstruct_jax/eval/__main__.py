"""`python -m bioinstruct_jax.eval`: evaluate a model on biomedical tasks, print results beside the paper's.

Example:
  python -m bioinstruct_jax.eval --model ckpt/llama2-7b-hf --adapter runs/bioinstruct/ckpt \
      --tasks medqa,pubmedqa,mts_dialog --data-dir ../shared/data --out eval_out \
      --judge-model gpt-4 --judge-base-url https://my-endpoint/v1
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from typing import Any, Sequence

import yaml

from bioinstruct_jax.cli import errors as cli_errors
from bioinstruct_jax.cli import arguments as cli_types
from bioinstruct_jax.cli.arguments import positive_int
from bioinstruct_jax.config.storage import staged_folder
from bioinstruct_jax.data import templates
from bioinstruct_jax.data.llm_client import LLMClient, LLMClientConfig
from bioinstruct_jax.parallel.distributed import refuse_multi_process
from bioinstruct_jax.eval import paper_results, prompt_styles, report, runner, tasks as tasks_mod
from bioinstruct_jax.eval.bertscore import BERTScorer
from bioinstruct_jax.eval.concepts import ConceptScorer, load_extractor
from bioinstruct_jax.eval.judge import Judge
from bioinstruct_jax.eval.predictor import Predictor
from bioinstruct_jax.infer.predictor import load_predictor


def _kv(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k:
            raise ValueError(f"{flag} expects KEY=VALUE, got {it!r}")
        out[k.strip()] = v
    return out


def _scalar(v: str) -> Any:
    return yaml.safe_load(v)


def _run_template(predictor: Any) -> str:
    """The template the predictor's training run used (`JaxPredictor.template`), else alpaca."""
    template = getattr(predictor, "template", None)
    return template if template and template != "raw" else templates.DEFAULT_TEMPLATE


def build_parser() -> argparse.ArgumentParser:
    p = cli_types.ArgumentParser(prog="python -m bioinstruct_jax.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF checkpoint folder or our checkpoint")
    p.add_argument("--adapter", dest="lora", help="LoRA checkpoint (PEFT adapter or training run) to apply on --model")
    p.add_argument("--tasks", default="paper",
                   help="comma list of: " + ",".join(tasks_mod.TASK_NAMES)
                   + ", jsonl:PATH[:METRIC], 'paper' (the paper's tasks) or 'all'")
    p.add_argument("--out", dest="output", required=True, help="output folder (predictions, results.json, judge cache)")
    p.add_argument("--data-dir", help="folder laid out like ../shared/data")
    p.add_argument("--path", action="append", default=[], metavar="TASK[.train]=FILE",
                   help="file for one task's test split (or .train: its one-shot pool); repeatable")
    p.add_argument("--limit", type=positive_int, help="first N examples of each task")
    p.add_argument("--shots", type=int, choices=(0, 1),
                   help="override the paper setting (QA zero-shot, IE and GEN one-shot)")
    p.add_argument("--qa-mode", choices=runner.QA_MODES, default="generate",
                   help="choice tasks: answer by generation, by option log-likelihood, or both")
    p.add_argument("--prompt-style", choices=prompt_styles.PROMPT_STYLES, default="paper",
                   help="log-likelihood form of choice tasks: paper (the task's instruction in the template, "
                   "option 'A. text' scored), lm-eval (lm-evaluation-harness 0.4 medqa_4options / medmcqa / "
                   "pubmedqa: ' A' after 'Answer:', no template; acc and acc_norm), cloze (the option text "
                   "scored, normalised per character)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--max-new-tokens", type=positive_int, help="override every task's generation budget")
    p.add_argument("--seed", type=int, default=0, help="seed of the one-shot example choice")
    p.add_argument("--paper-model", help='row of the paper\'s tables, e.g. "LLaMA 2 7B + BioInstruct" '
                   "(default: inferred from the checkpoint's config.json when possible)")
    p.add_argument("--judge-model", help="chat model for the GPT-4 judge of generation tasks (off if unset)")
    p.add_argument("--judge-base-url", help="OpenAI-compatible base URL for the judge")
    p.add_argument("--bertscore-model", metavar="DIR",
                   help="local encoder folder for BERTScore on free-text tasks, e.g. roberta-large (bert-score's "
                   "English default; the paper does not name its model); needs the 'metrics' extra (torch)")
    p.add_argument("--bertscore-layer", type=int,
                   help="hidden layer for BERTScore (default: bert-score's tuned layer for the encoder, "
                   "17 for roberta-large, else the last)")
    p.add_argument("--concept-extractor", metavar="dict:FILE|spacy:PATH",
                   help="medical-concept F1 on free-text tasks: a term dictionary file (term[TAB]concept id per "
                   "line) or a spaCy / scispaCy / QuickUMLS pipeline you have")
    p.add_argument("--skip-missing", action="store_true",
                   help="skip (one line each) tasks whose data files are missing instead of stopping")
    p.add_argument("--template", help="prompt template (alpaca, bioinstruct_paper, chat); default: the one the "
                   "training run (--model or --adapter) was trained with, else alpaca")
    p.add_argument("--predictor-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra keyword for bioinstruct_jax.infer.predictor.load_predictor (YAML scalar); repeatable")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of a training run (default: the latest)")
    cli_errors.add_debug_argument(p)
    p.add_alias("--lora", "--adapter")  # earlier names, still accepted
    p.add_alias("--output", "--out")
    return p


def build_text_scorers(args: argparse.Namespace) -> dict[str, Any]:
    """The optional free-text metrics the flags ask for, loaded before any model (fail early)."""
    scorers: dict[str, Any] = {}
    if args.bertscore_model:
        scorers["bertscore"] = BERTScorer(args.bertscore_model, layer=args.bertscore_layer)
    if args.concept_extractor:
        scorers["concept_f1"] = ConceptScorer(load_extractor(args.concept_extractor))
    return scorers


def main(argv: Sequence[str] | None = None, predictor: Predictor | None = None) -> dict[str, Any]:
    """CLI entry; `predictor` lets callers (tests) supply the model instead of loading --model."""
    args = build_parser().parse_args(argv)
    with staged_folder(args.output) as output:  # a gs:// --out: written locally, uploaded at the end
        return _evaluate(args, str(output), predictor)


def _evaluate(args: argparse.Namespace, output: str, predictor: Predictor | None) -> dict[str, Any]:
    refuse_multi_process("bioinstruct_jax.eval")  # one process; see distributed.py
    task_list = [tasks_mod.get_task(t) for t in tasks_mod.parse_task_list(args.tasks)]
    if not task_list:
        raise ValueError("--tasks selected no task")
    data = tasks_mod.DataSource(args.data_dir, _kv(args.path, "--path"))
    cfg = runner.EvalConfig(output_dir=output, shots=args.shots, qa_mode=args.qa_mode,
                            limit=args.limit, batch_size=args.batch_size, seed=args.seed,
                            max_new_tokens=args.max_new_tokens, prompt_style=args.prompt_style)
    judge = None
    if args.judge_model:
        client = LLMClient(LLMClientConfig(model=args.judge_model, base_url=args.judge_base_url))
        judge = Judge(client, args.judge_model, pathlib.Path(output) / "judge_cache.jsonl")
    runner.check_data(task_list, data, cfg, skip_missing=args.skip_missing)  # data errors before the (slow) model load
    text_scorers = build_text_scorers(args)
    paper_model = args.paper_model or paper_results.infer_paper_model(args.model, args.lora)
    if args.paper_model and paper_results.find_model(args.paper_model) is None:
        print(f"note: --paper-model {args.paper_model!r} is not in the paper's tables; known: "
              + "; ".join(paper_results.PAPER_RESULTS), file=sys.stderr)
    if predictor is None:
        extra = {k: _scalar(v) for k, v in _kv(args.predictor_arg, "--predictor-arg").items()}
        if args.step is not None:
            extra.setdefault("step", args.step)
        predictor = load_predictor(args.model, args.lora, **extra)
    template = args.template or _run_template(predictor)
    if template not in templates.TEMPLATE_NAMES:
        raise ValueError(f"--template {template!r}: known templates are {', '.join(templates.TEMPLATE_NAMES)}")
    cfg = dataclasses.replace(cfg, template=template)
    meta = {"model": args.model, "lora": args.lora, "judge_model": args.judge_model, "template": template}
    results = runner.run_eval(task_list, predictor, data, cfg, judge=judge, meta=meta,
                              paper_model=paper_model, text_scorers=text_scorers,
                              skip_missing=args.skip_missing)
    print(report.results_table(results))
    note = runner.results_cut_note(results)
    if note:
        print(note, file=sys.stderr)
    print(f"\nresults: {args.output}/results.json", file=sys.stderr)
    return results


if __name__ == "__main__":
    sys.exit(cli_errors.run(main))
