"""Chat templates and stop ids: a tokenizer's own jinja chat template, rendered as transformers does.

`render(tokenizer, messages, add_generation_prompt)` is transformers' `apply_chat_template(...,
tokenize=False)`: the tokenizer's own call for tokenizers transformers built (`AutoTokenizerAdapter`,
`GGUFTokenizer`), else transformers' `render_jinja_template` with the template and the special
token strings, the arguments `apply_chat_template` passes it. `encode_rendered` tokenizes such a
text with the template's special tokens as single ids (SentencePiece would spell `</s>` out).

`end_of_turn_id` is the token a template closes an assistant turn with (`<|im_end|>`,
`<|eot_id|>`, `</s>`), found by rendering a one-turn conversation; `stop_ids` joins it with the
tokenizer's EOS and every `eos_token_id` of the model's `generation_config.json` / `config.json`.
`user_message(instruction, input)` is the one user turn an instruction record becomes.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

from bioinstruct_jax.data.tokenizer import SentencePieceTokenizer

Message = dict[str, str]

_REPLY_MARK = "\x00REPLY\x00"


class ChatTemplateError(ValueError):
    """The tokenizer has no chat template, or its template does not render a usable turn."""


def has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _where(tokenizer: Any) -> str:
    for attr in ("gguf_file", "directory", "json_file", "model_file"):
        if getattr(tokenizer, attr, None) is not None:
            return str(getattr(tokenizer, attr))
    return type(tokenizer).__name__


def render(tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
    """The conversation as text through the tokenizer's chat template (no tokenization)."""
    if not has_template(tokenizer):
        raise ChatTemplateError(f"{_where(tokenizer)}: the tokenizer has no chat template "
                                "(use another --template, or a tokenizer with chat_template)")
    hf = getattr(tokenizer, "tok", None)
    if hf is not None and hasattr(hf, "apply_chat_template"):
        return hf.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    # costly (transformers, seconds): only for a template without a transformers tokenizer to render it
    from transformers.utils.chat_template_utils import render_jinja_template

    piece = getattr(tokenizer, "id_to_piece")
    specials = {"bos_token": piece(tokenizer.bos_id), "eos_token": piece(tokenizer.eos_id)}
    if getattr(tokenizer, "unk_id", -1) >= 0:
        specials["unk_token"] = piece(tokenizer.unk_id)
    rendered, _ = render_jinja_template(conversations=[list(messages)], chat_template=tokenizer.chat_template,
                                        add_generation_prompt=add_generation_prompt, **specials)
    return rendered[0]


def _special_strings(tokenizer: Any) -> dict[str, int]:
    """Special tokens a plain `encode` would spell out as text (SentencePiece control pieces)."""
    if not isinstance(tokenizer, SentencePieceTokenizer):
        return {}  # tokenizers / transformers match added special tokens themselves
    return {tokenizer.id_to_piece(i): i for i in (tokenizer.bos_id, tokenizer.eos_id)}


def encode_rendered(tokenizer: Any, text: str) -> list[int]:
    """Ids of rendered chat text, special token strings as their ids, nothing added around it."""
    specials = _special_strings(tokenizer)
    if not specials:
        return list(tokenizer.encode(text))
    ids: list[int] = []
    rest = text
    while rest:
        hits = [(rest.find(s), s) for s in specials if s in rest]
        if not hits:
            ids += tokenizer.encode(rest)
            break
        at, s = min(hits)
        if at:
            ids += tokenizer.encode(rest[:at])
        ids.append(specials[s])
        rest = rest[at + len(s):]
    return ids


def starts_with_bos_text(tokenizer: Any, text: str) -> bool:
    """Whether the template wrote the BOS token itself (LLaMA-2 / -3 templates do)."""
    bos = tokenizer.id_to_piece(tokenizer.bos_id)
    return bool(bos) and text.startswith(bos)


def split_turn(tokenizer: Any, messages: Sequence[Message]) -> tuple[str, str, str]:
    """(prompt, reply, after) of a conversation whose last message is the assistant's: `prompt`
    renders everything before the reply with the generation prompt, `reply` is the rest up to and
    including the end-of-turn token text, `after` what the template writes after that."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ChatTemplateError("split_turn: the last message must be the assistant's reply")
    prompt = render(tokenizer, messages[:-1], add_generation_prompt=True)
    full = render(tokenizer, messages)
    if not full.startswith(prompt):
        raise ChatTemplateError(f"{_where(tokenizer)}: the chat template renders the conversation without "
                                "the generation prompt as its prefix; cannot separate the reply")
    reply = messages[-1]["content"]
    tail = full[len(prompt):]
    at = tail.find(reply)
    if at < 0:
        raise ChatTemplateError(f"{_where(tokenizer)}: the chat template does not render the assistant's "
                                "reply verbatim")
    eot = end_of_turn_text(tokenizer)
    end = at + len(reply)
    if eot and tail[end:].lstrip(" ").startswith(eot):
        end = tail.index(eot, end) + len(eot)
    return prompt, tail[:end], tail[end:]


def end_of_turn_text(tokenizer: Any) -> str | None:
    i = end_of_turn_id(tokenizer)
    return None if i is None else tokenizer.id_to_piece(i)


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The token the chat template closes an assistant turn with, or None (no template, or the
    turn ends in plain text)."""
    if not has_template(tokenizer):
        return None
    cached = getattr(tokenizer, "_end_of_turn", False)
    if cached is not False:
        return cached
    convo = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _REPLY_MARK}]
    try:
        full = render(tokenizer, convo)
    except Exception:  # a template that refuses this conversation shape has no turn end to find
        full = ""
    found = None
    if _REPLY_MARK in full:
        after = full.split(_REPLY_MARK, 1)[1].lstrip(" ")
        ids = encode_rendered(tokenizer, after) if after else []
        if ids and (ids[0] == tokenizer.eos_id or _is_special(tokenizer, ids[0])):
            found = int(ids[0])
    try:
        tokenizer._end_of_turn = found
    except AttributeError:  # a tokenizer object that does not take attributes: just recompute
        pass
    return found


def _is_special(tokenizer: Any, i: int) -> bool:
    hf = getattr(tokenizer, "tok", None)
    if hf is not None and hasattr(hf, "all_special_ids"):
        return i in set(hf.all_special_ids) or tokenizer.decode([i], skip_special=True) == ""
    sp = getattr(tokenizer, "sp", None)
    if sp is not None:
        return bool(sp.is_control(i))
    return tokenizer.decode([i], skip_special=True) == "" and tokenizer.decode([i], skip_special=False) != ""


def generation_eos_ids(model_dir: str | pathlib.Path | None) -> list[int]:
    """Every `eos_token_id` of `generation_config.json` (then `config.json`) in an HF folder."""
    if not model_dir:
        return []
    d = pathlib.Path(model_dir)
    out: list[int] = []
    for name in ("generation_config.json", "config.json"):
        f = d / name
        if not (d.is_dir() and f.is_file()):
            continue
        try:
            value = json.loads(f.read_text(encoding="utf-8")).get("eos_token_id")
        except (json.JSONDecodeError, AttributeError):
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and v not in out:
                out.append(v)
    return out


def stop_ids(tokenizer: Any, model_eos: Sequence[int] = (), model_dir: str | pathlib.Path | None = None) -> list[int]:
    """Ids that end generation: the model config's EOS ids, generation_config.json's list, the
    tokenizer's EOS and the chat template's end-of-turn token."""
    ids = [int(i) for i in model_eos] + generation_eos_ids(model_dir) + [int(tokenizer.eos_id)]
    eot = end_of_turn_id(tokenizer)
    if eot is not None:
        ids.append(eot)
    return list(dict.fromkeys(ids))


def user_message(instruction: str, input_text: str = "") -> Message:
    """The user turn of an instruction record: the instruction, then its input after a blank line."""
    instruction, input_text = instruction.strip(), (input_text or "").strip()
    return {"role": "user", "content": f"{instruction}\n\n{input_text}" if input_text else instruction}


def prompt_for(tokenizer: Any, question: str) -> str:
    """A one-question conversation rendered with the generation prompt (`generate --chat`)."""
    return render(tokenizer, [{"role": "user", "content": question}], add_generation_prompt=True)


__all__ = ["ChatTemplateError", "has_template", "render", "encode_rendered", "starts_with_bos_text", "split_turn",
           "end_of_turn_id", "end_of_turn_text", "generation_eos_ids", "stop_ids", "user_message", "prompt_for"]
