"""The generation request's text: the paper's rules, then three seed tasks as items 1-3 of a
numbered `Instruction / Input / Output` list, asking the model to go on from item 4. The only place
this text lives (the label prompt is in `data/labels.py`)."""

from __future__ import annotations

from bioinstruct_jax.data.records import InstructionRecord

NO_INPUT = "<noinput>"

GENERATION_PROMPT_HEADER = """You are asked to come up with a set of 20 diverse task instructions in biomedicine and clinical care. These task instructions will be given to a language model, and we will evaluate how well it completes them.

Here are the requirements:
1. Try not to repeat the verb for each instruction, to maximize diversity.
2. The language used for the instructions should also be diverse: combine questions with imperative instructions.
3. The types of tasks should be diverse: include question answering (including multiple-choice and yes/no/maybe questions), information extraction, classification, natural language inference, summarization, simplification for patients, clinical note writing, differential diagnosis, clinical trial eligibility, coding, and others.
4. A language model must be able to complete the instruction with text alone: do not ask for or refer to any visual or audio content (images, pictures, graphs, videos, recordings), and do not ask it to take actions in the world.
5. The instructions must be in English.
6. Each instruction must be concise: a single sentence, either an imperative sentence or a question.
7. Write an appropriate input for each instruction: a specific, realistic and substantial biomedical or clinical example (a case vignette, a dialogue, a note excerpt, an abstract, a question with options, ...), never a placeholder. If an instruction needs no input, write "<noinput>" as its input.
8. The output must be a correct and complete response to the instruction and its input, as a careful clinician or biomedical scientist would write it.

List of 20 tasks:
"""


def format_task(n: int, rec: InstructionRecord) -> str:
    inp = rec.input.strip() or NO_INPUT
    return f"{n}. Instruction: {rec.instruction.strip()}\n{n}. Input: {inp}\n{n}. Output: {rec.output.strip()}"


def build_generation_prompt(examples: list[InstructionRecord]) -> str:
    """The request text: rules, the examples as items 1..k, then `k+1. Instruction:`."""
    items = "\n\n".join(format_task(i, rec) for i, rec in enumerate(examples, 1))
    return f"{GENERATION_PROMPT_HEADER}\n{items}\n\n{len(examples) + 1}. Instruction:"
