"""The tokenizer of a GGUF export, as llama.cpp reads it: the `tokenizer.ggml.*` metadata and chat template.

`add_tokenizer(writer, tokenizer, vocab_size)` writes, by what the tokenizer is:
- a GGUF file (or a tokenizer read from one, `checkpoint.tokenizer.GGUFTokenizer`): its
  `tokenizer.*` fields copied as they are (token list, merges, pre-tokenizer name, special ids);
- a SentencePiece model (LLaMA 1/2): the `llama` kind, pieces with scores and types as
  `gguf.vocab.SentencePieceVocab` reads them;
- an HF `tokenizer.json` byte-level BPE (LLaMA 3, SmolLM2): the `gpt2` kind with the vocabulary,
  merges, added tokens (special ones CONTROL, others USER_DEFINED) and the llama.cpp pre-tokenizer
  whose regex the file's pre-tokenizer matches (`bpe_pre_tokenizer`); a byte-fallback BPE
  (a SentencePiece model converted to `tokenizer.json`) is the `llama` kind;
- a tokenizer object: saved to a temporary folder (`save()`) and read as above.
BOS / EOS / UNK / pad ids, whether BOS / EOS are added, and the chat template come from our
`Tokenizer` (the conventions training used). A vocabulary shorter than the model's embedding is
padded with `[PAD{i}]` tokens of type UNUSED, as llama.cpp's converter does.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

from gguf.constants import GGUFValueType, Keys, TokenType
from gguf.vocab import LlamaHfVocab, SentencePieceVocab

from bioinstruct_jax.checkpoint import gguf as gguf_reader
from bioinstruct_jax.checkpoint.output import ExportError
from bioinstruct_jax.checkpoint.tokenizer import load_tokenizer

# llama.cpp pre-tokenizer names by the regexes of a byte-level `tokenizer.json` pre-tokenizer:
# GPT-2's regex alone is "gpt-2"; digits split one by one before it is "smollm" (SmolLM / SmolLM2);
# the LLaMA 3 regex is "llama-bpe".
_GPT2_REGEX = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
_LLAMA3_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                 "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def _pre_tokenizer_parts(pre: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not pre:
        return []
    return list(pre.get("pretokenizers", [])) if pre.get("type") == "Sequence" else [pre]


def bpe_pre_tokenizer(tokenizer_json: dict[str, Any], where: str) -> str:
    """The llama.cpp pre-tokenizer name for a byte-level BPE `tokenizer.json`, or an ExportError."""
    parts = _pre_tokenizer_parts(tokenizer_json.get("pre_tokenizer"))
    kinds = [p.get("type") for p in parts]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    if kinds == ["ByteLevel"] and byte_level[0].get("use_regex", True):
        return "gpt-2"
    if (kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits")
            and byte_level[0].get("use_regex", True)):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not byte_level[0].get("use_regex", True):
        pattern = parts[0].get("pattern", {})
        if pattern.get("Regex") == _LLAMA3_REGEX:
            return "llama-bpe"
    raise ExportError(f"{where}: its pre-tokenizer ({' + '.join(map(str, kinds)) or 'none'}) matches none of the llama.cpp "
                      "names known here (gpt-2, smollm, llama-bpe); llama.cpp would split text differently, so no GGUF "
                      "is written")


def _copy_gguf_tokenizer(writer: Any, gguf_file: pathlib.Path) -> None:
    """Every `tokenizer.*` field of a GGUF file, with its own value types."""
    reader = gguf_reader.open_reader(gguf_file)
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)


def _bpe_tokens(data: dict[str, Any], where: str) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of a byte-level BPE `tokenizer.json`."""
    vocab: dict[str, int] = data["model"]["vocab"]
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    size = max([*vocab.values(), *added]) + 1
    tokens: list[str | None] = [None] * size
    types = [int(TokenType.NORMAL)] * size
    for text, i in vocab.items():
        tokens[i] = text
    for i, t in added.items():
        tokens[i] = t["content"]
        types[i] = int(TokenType.CONTROL if t.get("special") else TokenType.USER_DEFINED)
    missing = [i for i, t in enumerate(tokens) if t is None]
    if missing:
        raise ExportError(f"{where}: token ids {missing[:5]} have no token (the vocabulary has gaps)")
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    return tokens, types, merges  # type: ignore[return-value]


def _files_tokenizer(writer: Any, folder: pathlib.Path) -> tuple[int, bool]:
    """The vocabulary of a tokenizer folder; returns (token count, whether it is SentencePiece-like)."""
    if (folder / "tokenizer.model").is_file():
        vocab = SentencePieceVocab(folder)
        kind = "llama"
    else:
        path = folder / "tokenizer.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data.get("model", {})
        if model.get("type") != "BPE":
            raise ExportError(f"{path}: a {model.get('type')} tokenizer; a GGUF export takes SentencePiece or BPE")
        if not model.get("byte_fallback"):
            tokens, types, merges = _bpe_tokens(data, str(path))
            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre(bpe_pre_tokenizer(data, str(path)))
            writer.add_token_list(tokens)
            writer.add_token_types(types)
            writer.add_token_merges(merges)
            return len(tokens), False
        vocab = LlamaHfVocab(folder)
        kind = "llama"
    tokens, scores, types = [], [], []
    for text, score, toktype in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(int(toktype))
    writer.add_tokenizer_model(kind)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    return len(tokens), True


def add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    """Write the tokenizer metadata of `tokenizer` (a path or a `Tokenizer`) for a model of `vocab_size`."""
    gguf_file = getattr(tokenizer, "gguf_file", None)
    if gguf_file is None and isinstance(tokenizer, (str, os.PathLike)) and gguf_reader.is_gguf(tokenizer):
        gguf_file = gguf_reader.find_gguf(tokenizer)
    if gguf_file is not None:
        _copy_gguf_tokenizer(writer, pathlib.Path(gguf_file))
        return
    with tempfile.TemporaryDirectory(prefix="gguf-tokenizer-") as tmp:
        folder = pathlib.Path(tmp)
        tok = tokenizer if hasattr(tokenizer, "save") else load_tokenizer(tokenizer)
        tok.save(folder)
        count, sentencepiece = _files_tokenizer(writer, folder)
    if count > vocab_size:
        raise ExportError(f"the tokenizer has {count} tokens but the model's embedding only {vocab_size} rows")
    if count < vocab_size:  # padded embedding rows, as llama.cpp's converter names them
        _pad_vocabulary(writer, count, vocab_size, sentencepiece)
    writer.add_bos_token_id(tok.bos_id)
    writer.add_eos_token_id(tok.eos_id)
    if getattr(tok, "unk_id", -1) >= 0:
        writer.add_unk_token_id(tok.unk_id)
    writer.add_pad_token_id(tok.pad_id)
    writer.add_add_bos_token(bool(tok.adds_bos))
    writer.add_add_eos_token(bool(tok.adds_eos))
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)


def _pad_vocabulary(writer: Any, count: int, vocab_size: int, sentencepiece: bool) -> None:
    """Append `[PAD{i}]` tokens (type UNUSED) to the token list (and scores) already in the writer."""
    kv = writer.kv_data[0]
    kv[Keys.Tokenizer.LIST].value.extend(f"[PAD{i}]" for i in range(count, vocab_size))
    kv[Keys.Tokenizer.TOKEN_TYPE].value.extend([int(TokenType.UNUSED)] * (vocab_size - count))
    if sentencepiece:
        kv[Keys.Tokenizer.SCORES].value.extend([-1000.0] * (vocab_size - count))


__all__ = ["add_tokenizer", "bpe_pre_tokenizer"]
