"""The paper's reported numbers (PAPER.md section 4), keyed by model name and our task names.

QA: zero-shot accuracy (%). IE: one-shot F1 (%). GEN: one-shot GPT-4 coherence (1-5).
Each entry says which of our metrics it corresponds to, so the report can put them side by side.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

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

_QA = ("medqa", "medmcqa", "pubmedqa", "bioasq", "mednli")


def _qa(*vals: float) -> dict[str, float]:
    return dict(zip(_QA, vals))


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
