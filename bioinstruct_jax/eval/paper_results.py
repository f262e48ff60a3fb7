"""The paper's reported numbers (PAPER.md section 4), keyed by model name and our task names.

QA: zero-shot accuracy (%). IE: one-shot F1 (%). GEN: one-shot GPT-4 coherence (1-5).
Each entry says which of our metrics it corresponds to, so the report can put them side by side.
Also: the task groups (QA / IE / GEN) and the category ablation (LLaMA 2 7B trained on one
category, each group's average). The paper reports no BERTScore, BLEURT or concept-F1 numbers in
the tables PAPER.md restates, and its data-size curve only as a figure (no values).
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

from bioinstruct_jax.eval import tasks

# task -> (our metric key, what the paper reports)
PAPER_METRIC = {
    "medqa": ("accuracy", "accuracy %, zero-shot"),
    "medmcqa": ("accuracy", "accuracy %, zero-shot"),
    "pubmedqa": ("accuracy", "accuracy %, zero-shot"),
    "bioasq": ("accuracy", "accuracy %, zero-shot"),
    "mednli": ("accuracy", "accuracy %, zero-shot"),
    "medication_status": ("f1", "F1 %, one-shot"),
    "coreference": ("f1", "F1 %, one-shot"),
    "mts_dialog": ("judge_coherence", "GPT-4 coherence 1-5, one-shot"),
    "icliniq": ("judge_coherence", "GPT-4 coherence 1-5, one-shot"),
}


# The paper's evaluation groups and the tasks in each (PAPER.md §3), from the task table's `paper` marks.
GROUPS: dict[str, tuple[str, ...]] = tasks.paper_groups()
GROUP_METRIC = {"qa": "accuracy", "ie": "f1", "gen": "judge_coherence"}
# Used for a group when no task has the paper's metric (no judge run): ours only, never beside the paper's.
GROUP_FALLBACK = {"qa": ("loglik_accuracy",), "ie": (), "gen": ("bertscore_f1", "rougeL")}

# Category ablation (PAPER.md §4): LLaMA 2 7B LoRA-tuned on one category's instructions, then each
# group's average: QA accuracy %, IE F1 %, GEN GPT-4 score (1-5).
ABLATION_MODEL = "LLaMA 2 7B"
PAPER_ABLATION: dict[str, dict[str, float]] = {
    "qa": {"qa": 53.46, "ie": 69.07, "gen": 4.36},
    "ie": {"qa": 52.80, "ie": 72.43, "gen": 4.39},
    "gen": {"qa": 52.27, "ie": 65.17, "gen": 4.42},
}


def _qa(*vals: float) -> dict[str, float]:
    return dict(zip(GROUPS["qa"], vals))


PAPER_RESULTS: dict[str, dict[str, float]] = {
    "LLaMA 1 7B": _qa(27.47, 25.06, 47.54, 70.14, 33.59),
    "LLaMA 1 7B + BioInstruct": _qa(31.50, 31.46, 64.36, 81.14, 43.27),
    "LLaMA 1 13B": _qa(33.85, 31.76, 54.88, 69.86, 34.62),
    "LLaMA 1 13B + BioInstruct": _qa(36.76, 34.03, 58.75, 84.29, 34.63),
    "LLaMA 2 7B": {**_qa(30.37, 29.41, 57.20, 65.86, 33.35),
                   "medication_status": 71.72, "coreference": 50.03,
                   "mts_dialog": 2.80, "icliniq": 1.95},
    "LLaMA 2 7B + BioInstruct": {**_qa(37.25, 36.14, 63.97, 84.76, 34.96),
                                 "medication_status": 75.63, "coreference": 61.24,
                                 "mts_dialog": 4.45, "icliniq": 4.86},
    "LLaMA 2 13B": _qa(34.89, 32.37, 67.76, 73.14, 35.94),
    "LLaMA 2 13B + BioInstruct": _qa(39.32, 36.54, 71.73, 87.38, 41.70),
    "MedAlpaca 7B": _qa(37.61, 34.37, 48.82, 61.57, 36.60),
}


def paper_group_average(model: str | None, group: str) -> float | None:
    """The mean of the paper's numbers for a model over a group's tasks (None if any is missing)."""
    vals = [paper_value(model, t) for t in GROUPS[group]]
    return sum(vals) / len(vals) if vals and all(v is not None for v in vals) else None  # type: ignore[arg-type]


def data_size_points(group: str) -> list[tuple[int, float]]:
    """The paper's points of a group on the data-size curve that its tables give: LLaMA 2 7B with
    0 instructions (the base model) and with all 25,005 (+ BioInstruct). The curve between them is a
    figure in the paper, without values."""
    pts = []
    for n, model in ((0, "LLaMA 2 7B"), (25_005, "LLaMA 2 7B + BioInstruct")):
        v = paper_group_average(model, group)
        if v is not None:
            pts.append((n, v))
    return pts


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z+]+", "", name.lower())


def find_model(name: str | None) -> str | None:
    """The PAPER_RESULTS key matching `name` (case, spaces and dashes ignored), or None."""
    if not name:
        return None
    want = _norm(name)
    for k in PAPER_RESULTS:
        if _norm(k) == want:
            return k
    return None


def paper_value(model: str | None, task: str) -> float | None:
    key = find_model(model)
    return PAPER_RESULTS.get(key, {}).get(task) if key else None


def infer_paper_model(model_path: str, lora: str | None = None) -> str | None:
    """Guess the paper's row from an HF checkpoint folder's config.json (LLaMA only):
    32 layers / hidden 4096 -> 7B, 40 / 5120 -> 13B; max_position_embeddings 2048 -> LLaMA 1,
    4096 -> LLaMA 2; a LoRA adapter adds " + BioInstruct". None when it cannot tell."""
    cfg_path = pathlib.Path(model_path) / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg: dict[str, Any] = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if cfg.get("model_type") != "llama":
        return None
    size = {(32, 4096): "7B", (40, 5120): "13B"}.get((cfg.get("num_hidden_layers"), cfg.get("hidden_size")))
    gen = {2048: "LLaMA 1", 4096: "LLaMA 2"}.get(cfg.get("max_position_embeddings"))
    if size is None or gen is None or cfg.get("vocab_size") != 32000:
        return None
    return f"{gen} {size}" + (" + BioInstruct" if lora else "")
