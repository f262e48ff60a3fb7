"""Runs evaluation tasks against a `Predictor`: prompts in batches, predictions appended to
`DIR/<task>.predictions.jsonl` as each batch finishes (a rerun skips ids already there),
metrics, optional GPT-4 judge and optional text scorers (BERTScore, concept F1) for free-text
tasks, `DIR/results.json`. With `skip_missing`, a task whose data files are absent is skipped with
one line instead of stopping the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
from typing import Any, Protocol, Sequence

from tqdm.auto import tqdm

from bioinstruct_jax.data.journal import read_jsonl_tail_safe, write_json_atomic
from bioinstruct_jax.eval import metric_registry, paper_results, prompt_styles
from bioinstruct_jax.eval.diagnostics import answer_diagnostics
from bioinstruct_jax.eval.judge import Judge, aggregate
from bioinstruct_jax.eval.loaders import Example
from bioinstruct_jax.eval.predictor import Predictor
from bioinstruct_jax.data.templates import format_prompt
from bioinstruct_jax.eval.tasks import GEN, DataSource, Task

QA_MODES = ("generate", "loglik", "both")


class TextScorer(Protocol):
    """An optional metric of free text against references (`bertscore.BERTScorer`,
    `concepts.ConceptScorer`): `score` returns named percentages, `describe` its settings."""

    def score(self, preds: Sequence[str | None], refs: Sequence[str]) -> dict[str, float]: ...

    def describe(self) -> dict[str, Any]: ...


@dataclasses.dataclass
class EvalConfig:
    """What to run. `shots` None = each task's paper setting (QA 0, IE and GEN 1)."""

    output_dir: str
    shots: int | None = None
    qa_mode: str = "generate"
    limit: int | None = None
    batch_size: int = 8
    seed: int = 0
    max_new_tokens: int | None = None  # None = each task's own budget
    template: str = "alpaca"  # prompt template (`data.templates`); `chat` renders with the predictor's tokenizer
    prompt_style: str = prompt_styles.DEFAULT_STYLE  # log-likelihood form of choice tasks (`eval.prompt_styles`)

    def __post_init__(self) -> None:
        if self.qa_mode not in QA_MODES:
            raise ValueError(f"qa_mode {self.qa_mode!r} not one of {QA_MODES}")
        if self.shots not in (None, 0, 1):
            raise ValueError(f"shots must be 0 or 1, got {self.shots}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or unset for every example), got {self.limit}")
        if self.prompt_style not in prompt_styles.PROMPT_STYLES:
            raise ValueError(f"prompt_style {self.prompt_style!r} not one of {prompt_styles.PROMPT_STYLES}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (or unset for each task's own), got {self.max_new_tokens}")


def stop_strings(template: str = "alpaca") -> list[str]:
    """Generation stops where the model starts a new template section or a new example (with the
    chat template, the end-of-turn token stops it instead)."""
    if template == "chat":
        return []
    marker = "\x00INSTRUCTION\x00"
    head = format_prompt(marker, "").split(marker)[0].strip().splitlines()
    stops = ["\n### "]
    if head and head[0].strip():
        stops.append(head[0].strip()[:40])
    return stops


def _modes(task: Task, qa_mode: str) -> tuple[bool, bool]:
    """(generate?, loglik?) for this task; log-likelihood only exists for tasks with a metric
    computed from it (`metric_registry`: the choice tasks)."""
    if not metric_registry.uses(task.metrics, "loglik"):
        return True, False
    return qa_mode in ("generate", "both"), qa_mode in ("loglik", "both")


def read_predictions(path: pathlib.Path) -> dict[str, dict[str, Any]]:
    """id -> record from a predictions file. A last line cut short by an interruption is dropped
    from the file (`journal.read_jsonl_tail_safe`), so appends start on a fresh line."""
    rows, _ = read_jsonl_tail_safe(path)
    return {str(rec["id"]): rec for _, rec in rows if isinstance(rec, dict) and "id" in rec}


def _check_settings(path: pathlib.Path, settings: dict[str, Any]) -> None:
    """Predictions in DIR must all come from the same settings; refuse to mix."""
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise ValueError(
                f"{path}: existing predictions were made with different settings "
                f"{ {k: f'{a!r} -> {b!r}' for k, (a, b) in diff.items()} }; "
                "use another --out dir or delete that task's files")
        return
    write_json_atomic(path, settings, indent=1, sort_keys=False)


def scoring_form(task: Task, ex: Example, style: str, paper_prompt: str) -> prompt_styles.ScoringForm:
    """The (context, choices) a choice task's item is scored with in `style`."""
    if style == "lm-eval":
        return prompt_styles.lm_eval_form(task.name, ex)
    if style == "cloze":
        return prompt_styles.cloze_form(task, ex)
    return prompt_styles.ScoringForm(paper_prompt, tuple(task.choices(ex) or ()), delimiter="")


def _score_forms(predictor: Predictor, forms: Sequence[prompt_styles.ScoringForm]) -> list[list[float]]:
    """Per form, its choices' log-likelihoods: the predictor's batched `score_choices` when it has
    one, else one `score` row per (context, choice)."""
    if hasattr(predictor, "score_choices"):
        out = predictor.score_choices([f.context for f in forms], [f.continuations for f in forms])
        return [[float(x) for x in s] for s in out]
    flat_p = [f.context for f in forms for _ in f.choices]
    flat_c = [c for f in forms for c in f.continuations]
    scores = predictor.score(flat_p, flat_c)
    if len(scores) != len(flat_c):
        raise RuntimeError(f"predictor.score returned {len(scores)} scores for {len(flat_c)} pairs")
    out, i = [], 0
    for f in forms:
        out.append([float(x) for x in scores[i:i + len(f.choices)]])
        i += len(f.choices)
    return out


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # the first maximum, as numpy's argmax


def _predict_batch(task: Task, predictor: Predictor, batch: Sequence[Example], prompts: list[str],
                   gen: bool, ll: bool, max_new_tokens: int, stops: list[str],
                   style: str = prompt_styles.DEFAULT_STYLE) -> list[dict[str, Any]]:
    recs = [{"id": ex.id, "prompt": p, "gold": task.gold(ex)} for ex, p in zip(batch, prompts)]
    if gen:
        outs = predictor.generate(list(prompts), max_new_tokens=max_new_tokens, stop=stops)
        if len(outs) != len(prompts):
            raise RuntimeError(f"predictor.generate returned {len(outs)} texts for {len(prompts)} prompts")
        for r, ex, text in zip(recs, batch, outs):
            r["generation"] = text
            r["pred"] = task.parse(text, ex)
        _record_cuts(recs, getattr(predictor, "last_cuts", None), [1] * len(recs))
    if ll:
        forms = [scoring_form(task, ex, style, p) for ex, p in zip(batch, prompts)]
        scores = _score_forms(predictor, forms)
        _record_cuts(recs, getattr(predictor, "last_cuts", None), [len(f.choices) for f in forms])
        for r, form, s in zip(recs, forms, scores):
            norm = [x / n for x, n in zip(s, form.norm_lengths)]
            if style != prompt_styles.DEFAULT_STYLE:
                r["prompt" if not gen else "loglik_prompt"] = form.context
            r["choices"] = form.answers
            r["loglik"] = s  # per choice, in choice order
            r["loglik_pred"] = form.answers[_argmax(s)] if s else None
            r["loglik_pred_norm"] = form.answers[_argmax(norm)] if s else None
    return recs


def _record_cuts(recs: list[dict[str, Any]], cuts: Sequence[int] | None, per_record: Sequence[int]) -> None:
    """`prompt_tokens_cut` on each record whose prompt the predictor cut to fit the context (the
    largest cut among its calls); `cuts` is the predictor's `last_cuts`, `per_record` how many of
    them belong to each record in turn."""
    if not cuts or len(cuts) != sum(per_record):
        return
    at = 0
    for r, n in zip(recs, per_record):
        most = max(cuts[at:at + n], default=0)
        at += n
        if most > 0:
            r["prompt_tokens_cut"] = max(most, int(r.get("prompt_tokens_cut", 0)))


def results_cut_note(results: dict[str, Any]) -> str | None:
    """The eval command's one line on prompts cut to fit the context, per task, from results.json's
    `prompts_cut` / `prompt_tokens_cut` (None when no task's prompt was cut)."""
    parts = [f"{name} {e['prompts_cut']} of {e['n']} items ({e.get('prompt_tokens_cut', 0):,} tokens)"
             for name, e in results.get("tasks", {}).items() if e.get("prompts_cut")]
    if not parts:
        return None
    return ("note: prompts cut to fit the model's context, their beginnings dropped (each item's "
            "prompt_tokens_cut in TASK.predictions.jsonl): " + "; ".join(parts))


@dataclasses.dataclass(frozen=True)
class TaskPlan:
    """What one task's run does: its items, the one-shot example, how it answers, its budget."""

    examples: list[Example]
    shots: int
    shot: Example | None
    generate: bool
    loglik: bool
    style: str
    max_new_tokens: int

    @property
    def mode(self) -> str:
        return "both" if self.generate and self.loglik else "generate" if self.generate else "loglik"


def plan_task(task: Task, data: DataSource, cfg: EvalConfig) -> TaskPlan:
    """Load `task`'s items and check the settings apply to it (ValueError naming the task)."""
    examples = task.load(data)
    if not examples:
        raise ValueError(f"task {task.name}: its data has no examples ({task.description})")
    shots = task.default_shots if cfg.shots is None else cfg.shots
    shot = task.shot(data, cfg.seed) if shots else None  # from the training split: never a test item
    if cfg.limit is not None:
        examples = examples[: cfg.limit]
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"task {task.name}: duplicate example ids {dup}")
    gen, ll = _modes(task, cfg.qa_mode)
    style = cfg.prompt_style if ll else prompt_styles.DEFAULT_STYLE
    if style != prompt_styles.DEFAULT_STYLE:
        prompt_styles.check_style(style, task.name)
        if shots:
            raise ValueError(f"task {task.name}: --prompt-style {style} is zero-shot; drop --shots 1")
    return TaskPlan(examples, shots, shot, gen, ll, style, cfg.max_new_tokens or task.max_new_tokens)


def _settings(task: Task, plan: TaskPlan, cfg: EvalConfig, model_id: str) -> dict[str, Any]:
    """What DIR/<task>.run.json records: a rerun with other settings is refused."""
    return {"task": task.name, "model": model_id, "shots": plan.shots,
            "shot_id": plan.shot.id if plan.shot else None, "generate": plan.generate, "loglik": plan.loglik,
            "max_new_tokens": plan.max_new_tokens, "instruction": task.instruction,
            **({"template": cfg.template} if cfg.template != "alpaca" else {}),
            **({"prompt_style": plan.style} if plan.style != prompt_styles.DEFAULT_STYLE else {})}


def _predict(task: Task, predictor: Predictor, plan: TaskPlan, cfg: EvalConfig,
             pred_path: pathlib.Path) -> list[dict[str, Any]]:
    """Every item's prediction record: those already in `pred_path` kept, the rest predicted in
    batches and appended as each batch finishes."""
    done = read_predictions(pred_path)
    todo = [e for e in plan.examples if e.id not in done]
    stops = stop_strings(cfg.template)
    tokenizer = getattr(predictor, "tokenizer", None)
    bar = tqdm(total=len(plan.examples), initial=len(plan.examples) - len(todo), desc=task.name, unit="ex",
               file=sys.stderr, dynamic_ncols=True)
    with pred_path.open("a", encoding="utf-8") as f:
        for i in range(0, len(todo), cfg.batch_size):
            batch = todo[i:i + cfg.batch_size]
            prompts = [task.prompt(e, plan.shot, template=cfg.template, tokenizer=tokenizer) for e in batch]
            for rec in _predict_batch(task, predictor, batch, prompts, plan.generate, plan.loglik,
                                      plan.max_new_tokens, stops, plan.style):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                done[rec["id"]] = rec
            f.flush()
            bar.update(len(batch))
    bar.close()
    return [done[e.id] for e in plan.examples]


def _entry(task: Task, plan: TaskPlan, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The task's results entry from its records: metrics, counts, parse failures, diagnostics."""
    entry: dict[str, Any] = {"category": task.category, "description": task.description,
                             "n": len(records), "shots": plan.shots, "mode": plan.mode,
                             "metrics": task.score(records) if records else {},
                             "prompts_cut": sum(1 for r in records if r.get("prompt_tokens_cut")),
                             "prompt_tokens_cut": sum(int(r.get("prompt_tokens_cut", 0)) for r in records)}
    if plan.generate:
        fails = sum(r.get("pred") is None for r in records)
        entry["parse_failures"] = fails
        entry["parse_failure_rate"] = 100.0 * fails / len(records) if records else 0.0
    if task.kind == "choice" and records:
        entry["diagnostics"] = choice_diagnostics(task, records)
    if plan.loglik:
        entry["prompt_style"] = plan.style
        if plan.style == "lm-eval":
            entry["lm_eval"] = {"task": prompt_styles.LM_EVAL_TASKS[task.name],
                                "acc": entry["metrics"].get("loglik_accuracy"),
                                "acc_norm": entry["metrics"].get("loglik_accuracy_norm")}
    return entry


def _judge_scores(task: Task, judge: Judge, plan: TaskPlan, records: list[dict[str, Any]]) -> dict[str, float]:
    """The GPT-4 judge's means over the task's generations (`judge.aggregate`)."""
    by_id = {e.id: e for e in plan.examples}
    res = []
    for r in tqdm(records, desc=f"{task.name} judge", unit="ex", file=sys.stderr, dynamic_ncols=True):
        ex = by_id[r["id"]]
        res.append(judge.judge(instruction=task.instruction_for(ex), input_text=task.format_input(ex),
                               reference=str(r["gold"]), prediction=r.get("generation") or ""))
    return aggregate(res)


def run_task(task: Task, predictor: Predictor, data: DataSource, cfg: EvalConfig,
             judge: Judge | None = None, model_id: str = "",
             text_scorers: dict[str, TextScorer] | None = None) -> dict[str, Any]:
    """Evaluate one task; returns its results entry (also usable alone)."""
    out_dir = pathlib.Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_task(task, data, cfg)
    _check_settings(out_dir / f"{task.name}.run.json", _settings(task, plan, cfg, model_id))
    records = _predict(task, predictor, plan, cfg, out_dir / f"{task.name}.predictions.jsonl")
    entry = _entry(task, plan, records)
    if judge is not None and task.category == GEN and plan.generate:
        entry["metrics"].update(_judge_scores(task, judge, plan, records))
    if text_scorers and task.kind == "text" and plan.generate and records:
        preds = [r.get("pred") for r in records]
        refs = [str(r["gold"]) for r in records]
        for scorer in text_scorers.values():
            entry["metrics"].update(scorer.score(preds, refs))
    entry["headline"] = _headline(task, entry["metrics"])
    return entry


def choice_diagnostics(task: Task, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`diagnostics.answer_diagnostics` of each answer kind the records hold: `generate` (parsed
    replies), `loglik` (argmax log-likelihood) and `loglik_norm` (argmax length-normalised)."""
    golds = [r["gold"] for r in records]
    labels = list(records[0].get("choices") or getattr(task, "labels", None) or sorted(set(map(str, golds))))
    out = {}
    for name, key in (("generate", "pred"), ("loglik", "loglik_pred"), ("loglik_norm", "loglik_pred_norm")):
        if key in records[0] and (key != "pred" or "generation" in records[0]):
            out[name] = answer_diagnostics([r.get(key) for r in records], golds, labels)
    return out


def check_data(tasks: Sequence[Task], data: DataSource, cfg: EvalConfig, *, skip_missing: bool = False) -> None:
    """Load every task's examples (and its one-shot pool when it needs one) once, so a missing,
    broken or empty file is reported before the model is loaded. With `skip_missing`, a task whose
    files are absent is left for `run_eval` to skip with its one line."""
    for task in tasks:
        if _modes(task, cfg.qa_mode)[1] and cfg.prompt_style != prompt_styles.DEFAULT_STYLE:
            prompt_styles.check_style(cfg.prompt_style, task.name)
        if skip_missing and missing_data(task, data, cfg.shots) is not None:
            continue
        if not task.load(data):
            raise ValueError(f"task {task.name}: its data has no examples ({task.description})")
        if (task.default_shots if cfg.shots is None else cfg.shots):
            task.shot(data, cfg.seed)


def _headline(task: Task, m: dict[str, float]) -> str:
    """The metric shown in the table: the paper's where we have it, else the task's default."""
    pm = paper_results.PAPER_METRIC.get(task.name, (None,))[0]
    for key in (pm, task.headline, "accuracy", "loglik_accuracy", "f1", "rougeL"):
        if key and key in m and not (isinstance(m[key], float) and math.isnan(m[key])):
            return key
    return task.headline


def missing_data(task: Task, data: DataSource, shots: int | None) -> str | None:
    """Why `task` cannot run on `data` (a missing file), or None when its files are there."""
    try:
        task.load(data)
        if (task.default_shots if shots is None else shots):
            task.shot(data)
    except FileNotFoundError as err:
        return str(err)
    return None


def run_eval(tasks: Sequence[Task], predictor: Predictor, data: DataSource, cfg: EvalConfig, *,
             judge: Judge | None = None, meta: dict[str, Any] | None = None,
             paper_model: str | None = None, text_scorers: dict[str, TextScorer] | None = None,
             skip_missing: bool = False) -> dict[str, Any]:
    """Run `tasks` in order, rewriting DIR/results.json after each; returns the results.

    text_scorers: name -> scorer added to every free-text task (named in results' meta).
    skip_missing: a task whose data files are missing is skipped with one line on stderr (and
    listed in meta["skipped"]) instead of raising."""
    out_dir = pathlib.Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    results: dict[str, Any] = {"meta": {**(meta or {}), "paper_model": paper_results.find_model(paper_model),
                                        "qa_mode": cfg.qa_mode, "prompt_style": cfg.prompt_style,
                                        "shots": cfg.shots, "limit": cfg.limit,
                                        "text_metrics": {k: s.describe() for k, s in (text_scorers or {}).items()},
                                        "skipped": {}},
                               "tasks": {}}
    if results_path.exists():  # keep entries of tasks run before and not rerun now
        try:
            results["tasks"].update(json.loads(results_path.read_text(encoding="utf-8")).get("tasks", {}))
        except json.JSONDecodeError:
            pass
    model_id = str((meta or {}).get("model", ""))

    def write() -> None:
        write_json_atomic(results_path, results, indent=1, sort_keys=False)

    for task in tasks:
        if skip_missing:
            why = missing_data(task, data, cfg.shots)
            if why is not None:
                print(f"skip {task.name}: {why}", file=sys.stderr)
                results["meta"]["skipped"][task.name] = why
                continue
        entry = run_task(task, predictor, data, cfg, judge=judge, model_id=model_id, text_scorers=text_scorers)
        entry["paper"] = paper_results.paper_value(paper_model, task.name)
        results["tasks"][task.name] = entry
        write()
    write()
    return results
