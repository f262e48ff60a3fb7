"""How a choice task is put to a model for log-likelihood scoring (`--prompt-style`).

- `paper` (default): the task's own instruction in the training template, each option scored as
  its continuation "A. option text" (the form generation mode asks for).
- `lm-eval`: exactly lm-evaluation-harness 0.4.x's `medqa_4options`, `medmcqa` and `pubmedqa` tasks
  (their `doc_to_text`, `doc_to_choice`, the default target delimiter " "), zero-shot, no chat
  template and no instruction; BOS only where the tokenizer adds it (the predictor's rule, which
  is also lm-eval's HF backend default). The continuation is " A" after "Answer:".
- `cloze`: the option's own text is the continuation (" Penicillin" after "Answer:"), without the
  option list in the prompt (OLMES, arXiv 2406.08446: small models often cannot bind an answer to
  its letter). Its headline is `acc_norm`: the log-likelihood divided by the option's length in
  characters, lm-eval's `acc_norm` and OLMES's per-character normalisation.

A `ScoringForm` holds the context, the target delimiter and the (answer, choice text) pairs; each
choice is scored as the continuation delimiter + text, and `acc_norm` divides by len(text).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bioinstruct_jax.eval.loaders import Example

PROMPT_STYLES = ("paper", "lm-eval", "cloze")
DEFAULT_STYLE = "paper"
TARGET_DELIMITER = " "  # lm-eval's default `target_delimiter`
LM_EVAL_TASKS = {"medqa": "medqa_4options", "medmcqa": "medmcqa", "pubmedqa": "pubmedqa"}


@dataclasses.dataclass(frozen=True)
class ScoringForm:
    """context + delimiter + text, for each (answer, text) in `choices`, in choice order."""

    context: str
    choices: tuple[tuple[str, str], ...]
    delimiter: str = TARGET_DELIMITER

    @property
    def continuations(self) -> list[str]:
        return [self.delimiter + text for _, text in self.choices]

    @property
    def answers(self) -> list[str]:
        return [a for a, _ in self.choices]

    @property
    def norm_lengths(self) -> list[int]:
        """Characters of each choice's text (lm-eval `acc_norm`'s `len(choice)`), at least 1."""
        return [max(1, len(text)) for _, text in self.choices]


def check_style(style: str, task_name: str) -> None:
    """ValueError naming the styles when `style` is unknown or has no form for `task_name`."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style {style!r} not one of {', '.join(PROMPT_STYLES)}")
    if style == "lm-eval" and task_name not in LM_EVAL_TASKS:
        raise ValueError(f"--prompt-style lm-eval: task {task_name!r} has no lm-evaluation-harness counterpart "
                         f"(these do: {', '.join(f'{k} = {v}' for k, v in LM_EVAL_TASKS.items())})")


def lm_eval_form(task_name: str, ex: Example) -> ScoringForm:
    """lm-eval 0.4.x's rendering of `ex` (lm_eval/tasks/{medqa,medmcqa,pubmedqa})."""
    if task_name == "medqa":  # preprocess_medqa.doc_to_text; doc_to_choice ['A', 'B', 'C', 'D']
        answers = "".join(f"{k}. {v}\n" for k, v in _options(ex).items())
        return ScoringForm(f"Question: {ex.text}\n{answers}Answer:", tuple((k, k) for k in _options(ex)))
    if task_name == "medmcqa":  # utils_medmcqa.doc_to_text
        prompt = "Question: " + ex.text + "\nChoices:\n"
        for k, v in _options(ex).items():
            prompt += f"{k.upper()}. {v}\n"
        return ScoringForm(prompt + "Answer:", tuple((k, k) for k in _options(ex)))
    if task_name == "pubmedqa":  # preprocess_pubmedqa.doc_to_text; doc_to_choice ["yes", "no", "maybe"]
        ctxs = "\n".join(ex.meta.get("contexts") or [ex.context])
        return ScoringForm(f"Abstract: {ctxs}\nQuestion: {ex.text}\nAnswer:",
                           tuple((c, c) for c in ("yes", "no", "maybe")))
    raise ValueError(f"task {task_name!r} has no lm-evaluation-harness form")


def cloze_form(task: Any, ex: Example) -> ScoringForm:
    """The question (and its abstract / snippets) without the option list; the options' texts
    (or the task's labels) are the continuations."""
    parts = []
    if task.name == "pubmedqa":
        parts.append("Abstract: " + "\n".join(ex.meta.get("contexts") or [ex.context]))
    elif ex.context:
        parts.append(f"{task.context_name}: {ex.context}")
    parts.append(f"{task.text_name}: {ex.text}")
    context = "\n".join(parts) + "\nAnswer:"
    if ex.options:
        return ScoringForm(context, tuple(_options(ex).items()))
    return ScoringForm(context, tuple((label, label) for label in task.labels or ()))


def _options(ex: Example) -> dict[str, str]:
    if not ex.options:
        raise ValueError(f"item {ex.id}: no options to score")
    return ex.options
