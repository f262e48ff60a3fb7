"""The prompt templates (one place, shared by training and evaluation), in a named registry.

`alpaca` (default): the Alpaca preamble and `### Instruction:` / `### Input:` / `### Response:`
headers, the input section left out when the input is empty. `bioinstruct_paper`: the same with
the output header as the paper prints it (`### Output::`). The prompt ends right after the output
header's newline; the response follows directly (EOS is added by the tokenizing step).

`chat`: the record as one user turn (instruction, then the input after a blank line) rendered
through the tokenizer's own chat template with the generation prompt (`bioinstruct_jax.data.chat`,
transformers' `apply_chat_template`); the reply is the assistant's turn up to its end-of-turn token.
It needs the tokenizer, so it is not a `PromptTemplate`; `render_prompt` formats any template name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from bioinstruct_jax.config.sections import CHAT_TEMPLATE, DEFAULT_TEMPLATE, TEMPLATE_NAMES
from bioinstruct_jax.data import chat


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
        raise KeyError(f"unknown prompt template {name!r}; known: {sorted(TEMPLATES)}"
                       + (" (chat is rendered by render_prompt with a tokenizer)" if name == CHAT_TEMPLATE else ""))
    return TEMPLATES[name]


def render_prompt(template: str, instruction: str, input_text: str = "", *,
                  shots: Sequence[tuple[str, str, str]] = (), tokenizer: Any = None) -> str:
    """The prompt for one instruction in `template`, after `shots` (instruction, input, answer)
    demonstrations: for text templates each shot is its prompt + answer + a blank line; for `chat`
    each shot is a user turn and an assistant turn before the question's user turn."""
    if template == CHAT_TEMPLATE:
        if tokenizer is None:
            raise ValueError("the chat template needs the tokenizer whose chat template renders it")
        messages = []
        for s_instr, s_input, s_answer in shots:
            messages += [chat.user_message(s_instr, s_input), {"role": "assistant", "content": s_answer}]
        messages.append(chat.user_message(instruction, input_text))
        return chat.render(tokenizer, messages, add_generation_prompt=True)
    demos = "".join(f"{format_prompt(i, x, template)}{a}\n\n" for i, x, a in shots)
    return demos + format_prompt(instruction, input_text, template)


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


__all__ = ["DEFAULT_TEMPLATE", "CHAT_TEMPLATE", "TEMPLATE_NAMES", "render_prompt", "PromptTemplate", "TEMPLATES", "get_template", "format_prompt", "format_example"]
