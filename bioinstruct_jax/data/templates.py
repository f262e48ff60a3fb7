"""The prompt templates (one place, shared by training and evaluation), in a named registry.

`alpaca` (default): the Alpaca preamble and `### Instruction:` / `### Input:` / `### Response:`
headers, the input section left out when the input is empty. `bioinstruct_paper`: the same with
the output header as the paper prints it (`### Output::`). The prompt ends right after the output
header's newline; the response follows directly (EOS is added by the tokenizing step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

DEFAULT_TEMPLATE = "alpaca"


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    name: str
    preamble_with_input: str
    preamble_no_input: str
    instruction_header: str = "### Instruction:"
    input_header: str = "### Input:"
    response_header: str = "### Response:"

    def head(self, instruction: str, input_text: str = "") -> str:
        """Everything before the response header: preamble, instruction and input sections."""
        if input_text:
            return (f"{self.preamble_with_input}\n\n{self.instruction_header}\n{instruction}\n\n"
                    f"{self.input_header}\n{input_text}\n\n")
        return f"{self.preamble_no_input}\n\n{self.instruction_header}\n{instruction}\n\n"

    def tail(self) -> str:
        """The response header that closes every prompt."""
        return f"{self.response_header}\n"

    def format_prompt(self, instruction: str, input_text: str = "") -> str:
        return self.head(instruction, input_text) + self.tail()


_ALPACA_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                      "context. Write a response that appropriately completes the request.")
_ALPACA_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."

TEMPLATES: Mapping[str, PromptTemplate] = {
    "alpaca": PromptTemplate("alpaca", _ALPACA_WITH_INPUT, _ALPACA_NO_INPUT),
    "bioinstruct_paper": PromptTemplate("bioinstruct_paper", _ALPACA_WITH_INPUT, _ALPACA_NO_INPUT,
                                        response_header="### Output::"),
}


def get_template(name: str = DEFAULT_TEMPLATE) -> PromptTemplate:
    if name not in TEMPLATES:
        raise KeyError(f"unknown prompt template {name!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def format_prompt(instruction: str, input_text: str = "", template: str = DEFAULT_TEMPLATE) -> str:
    """The prompt for one instruction (and optional input), ending after the response header."""
    return get_template(template).format_prompt(instruction.strip(), (input_text or "").strip())


def _field(record: Any, key: str) -> str:
    value = record.get(key, "") if isinstance(record, Mapping) else getattr(record, key, "")
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return value or ""


def format_example(record: Any, template: str = DEFAULT_TEMPLATE) -> tuple[str, str]:
    """(prompt, response) of a record (a mapping or an object with instruction/input/output)."""
    return format_prompt(_field(record, "instruction"), _field(record, "input"), template), _field(record, "output")


__all__ = ["DEFAULT_TEMPLATE", "PromptTemplate", "TEMPLATES", "get_template", "format_prompt", "format_example"]
