"""How a task's items become prompt text (input styles) and how replies are read (answer kinds).

A task record (`task_record.Task`) names one input style and one answer kind; these two tables hold
the functions behind the names. An input style gives the instruction for an item and the item's
input text; an answer kind gives the gold answer, the one-shot target text, the reply parser and,
for closed answers, the (answer, continuation) pairs scored by log-likelihood. A new task reuses
them; only a new prompt layout or answer form adds an entry here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from bioinstruct_jax.eval import parsing
from bioinstruct_jax.eval.loaders import Example

CONTEXT_CHARS = 6000  # supporting text (abstract, snippets) is cut to this many characters

# MTS-Dialog's section codes (`section_header`) and the note sections they stand for (the dataset's
# documentation, Ben Abacha et al. 2023). Each reference is one section, so the prompt names it.
MTS_SECTIONS = {
    "GENHX": "history of present illness", "CC": "chief complaint", "FAM/SOCHX": "family and social history",
    "PASTMEDICALHX": "past medical history", "PASTSURGICAL": "past surgical history", "ALLERGY": "allergies",
    "ROS": "review of systems", "MEDICATIONS": "medications", "ASSESSMENT": "assessment",
    "EXAM": "physical examination", "DIAGNOSIS": "diagnosis", "DISPOSITION": "disposition", "PLAN": "plan",
    "EDCOURSE": "emergency department course", "IMMUNIZATIONS": "immunizations", "IMAGING": "imaging",
    "GYNHX": "gynecologic history", "PROCEDURES": "procedures", "OTHER_HISTORY": "other history",
    "LABS": "laboratory results",
}


@dataclasses.dataclass(frozen=True)
class InputStyle:
    """instruction(task, ex) -> the instruction; text(task, ex) -> the input under it."""

    instruction: Callable[[Any, Example], str]
    text: Callable[[Any, Example], str]


def _fixed_instruction(task: Any, ex: Example) -> str:
    return task.instruction


def _section_instruction(task: Any, ex: Example) -> str:
    """The instruction names the section (`{section}`) the reference is, from the item's
    `section_header` (an unknown code is used as written)."""
    code = str(ex.meta.get("section_header", "")).strip()
    name = MTS_SECTIONS.get(code.upper(), code.lower().replace("_", " ") or "requested")
    return task.instruction.format(section=name)


def _own_instruction(task: Any, ex: Example) -> str:
    """The record's own instruction when it has one (user tasks), else the task's."""
    return ex.meta.get("instruction") or task.instruction


def _question(task: Any, ex: Example) -> str:
    """Supporting text under `context_name`, the item under `text_name`, then lettered options."""
    parts = []
    if ex.context:
        ctx = ex.context if len(ex.context) <= CONTEXT_CHARS else ex.context[:CONTEXT_CHARS] + " ..."
        parts.append(f"{task.context_name}:\n{ctx}\n")
    parts.append(f"{task.text_name}: {ex.text}")
    if ex.options:
        parts.append("Options:\n" + "\n".join(f"{k}. {v}" for k, v in ex.options.items()))
    return "\n".join(parts)


def _named_text(task: Any, ex: Example) -> str:
    return f"{task.input_name}:\n{ex.text}" if task.input_name else ex.text


INPUT_STYLES: dict[str, InputStyle] = {
    "question": InputStyle(_fixed_instruction, _question),
    "sentence": InputStyle(_fixed_instruction, lambda task, ex: f"Sentence: {ex.text}"),
    "clinical_note": InputStyle(_fixed_instruction, lambda task, ex: f"Clinical note: {ex.text}"),
    "pronoun": InputStyle(_fixed_instruction,
                          lambda task, ex: f"Clinical text: {ex.text}\nPronoun: {ex.meta.get('pronoun', '')}"),
    "text": InputStyle(_fixed_instruction, _named_text),
    "section_text": InputStyle(_section_instruction, _named_text),
    "own_instruction": InputStyle(_own_instruction, _named_text),
}


@dataclasses.dataclass(frozen=True)
class AnswerKind:
    """gold(task, ex); target(task, ex) -> the one-shot answer text; parse(task, text, ex) -> the
    prediction (None when unreadable); choices(task, ex) -> (answer, continuation) pairs or None."""

    gold: Callable[[Any, Example], Any]
    target: Callable[[Any, Example], str]
    parse: Callable[[Any, str, Example], Any]
    choices: Callable[[Any, Example], list[tuple[str, str]] | None] = lambda task, ex: None


def _as_given(task: Any, ex: Example) -> Any:
    return ex.answer


def _as_text(task: Any, ex: Example) -> str:
    return str(ex.answer)


def _choice_target(task: Any, ex: Example) -> str:
    return f"{ex.answer}. {ex.options[ex.answer]}" if ex.options else str(ex.answer)


def _choice_parse(task: Any, text: str, ex: Example) -> str | None:
    if ex.options:
        return parsing.parse_mcqa(text, ex.options)
    if task.parser is not None:
        return task.parser(text)
    return parsing.parse_label(text, task.labels or ())


def _choice_pairs(task: Any, ex: Example) -> list[tuple[str, str]]:
    if ex.options:
        return [(k, f"{k}. {v}") for k, v in ex.options.items()]
    return [(label, label) for label in task.labels or ()]


def _entities(task: Any, ex: Example) -> list[str]:
    return [m for m, t in ex.answer if t in task.entity_types]


def _medications(task: Any, text: str, ex: Example) -> list[list[str]] | None:
    got = parsing.parse_medication_status(text)
    return None if got is None else [list(x) for x in got]


def _free_text(task: Any, text: str, ex: Example) -> str | None:
    text = (text or "").strip()
    return text or None


ANSWER_KINDS: dict[str, AnswerKind] = {
    # multiple choice (letters) or a closed label set
    "choice": AnswerKind(_as_given, _choice_target, _choice_parse, _choice_pairs),
    # NER as a generated mention list of the task's entity types
    "entities": AnswerKind(_entities, lambda task, ex: ", ".join(_entities(task, ex)) or "None",
                           lambda task, text, ex: parsing.parse_list(text)),
    # Agrawal et al. 2022 medication status: `medication: status` lines
    "medication": AnswerKind(_as_given, lambda task, ex: "\n".join(f"{m}: {s}" for m, s in ex.answer) or "None",
                             _medications),
    # a short span (coreference antecedent)
    "span": AnswerKind(_as_given, _as_text, lambda task, text, ex: parsing.parse_span(text)),
    # free text against a reference
    "text": AnswerKind(_as_given, _as_text, _free_text),
}
