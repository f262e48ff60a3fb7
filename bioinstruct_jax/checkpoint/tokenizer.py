"""The tokenizer of a model path: tokenizer files, or the tokenizer inside a GGUF model file.

- `GGUFTokenizer`: the tokenizer stored in a llama.cpp GGUF file's metadata (the `gpt2` BPE and
  `llama` SentencePiece kinds), converted by transformers (`AutoTokenizer.from_pretrained(folder,
  gguf_file=name)`), with the file's BOS / EOS / pad ids, `tokenizer.ggml.add_bos_token` and chat
  template. It lives with the GGUF reader (`checkpoint.gguf.open_reader`), since a GGUF file is a
  checkpoint.
- `load_tokenizer(path)`: a `.gguf` file, or a folder with one and no tokenizer files, gives its
  `GGUFTokenizer`; anything else goes to `data.tokenizer.load_tokenizer_files` (SentencePiece model,
  `tokenizer.json`, or a folder transformers reads offline).
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

from bioinstruct_jax.checkpoint.gguf import open_reader
from bioinstruct_jax.data import tokenizer as tokenizer_files
from bioinstruct_jax.data.tokenizer import AutoTokenizerAdapter, Tokenizer


def load_tokenizer(path: str | pathlib.Path, *, pad_id: int | None = None) -> Tokenizer:
    """The tokenizer at `path`: a GGUF file's (or a folder's only GGUF file's, when the folder has
    no tokenizer files), else `data.tokenizer.load_tokenizer_files(path)`."""
    p = pathlib.Path(path)
    if p.is_file() and p.suffix.lower() == ".gguf":
        return GGUFTokenizer(p, pad_id=pad_id)
    if p.is_dir() and not tokenizer_files.has_tokenizer_files(p):
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return GGUFTokenizer(ggufs[0], pad_id=pad_id)
    return tokenizer_files.load_tokenizer_files(p, pad_id=pad_id)


class GGUFTokenizer(AutoTokenizerAdapter):
    """The tokenizer in a GGUF file's metadata, converted by transformers (ids, special tokens,
    `tokenizer.ggml.add_bos_token`, chat template exactly as transformers reads the file).

    Built with `TokenizersBackend.from_pretrained(folder, gguf_file=name)`, the class
    `AutoTokenizer` picks for llama GGUF files, called directly: `AutoTokenizer` first parses the
    whole file again to choose the class, which costs about ten times the load itself
    (BENCHMARKS.md, "Loading a GGUF file's tokenizer"). transformers' own GGUF metadata reader imports torch; without torch the
    same conversion (`convert_gguf_tokenizer`) runs on metadata read by the `gguf` package
    (`gguf_tokenizer_backend`)."""

    def __init__(self, gguf_file: str | pathlib.Path, *, pad_id: int | None = None):
        f = pathlib.Path(gguf_file)
        if not f.is_file():
            raise FileNotFoundError(f"GGUF file {f} does not exist")
        self.gguf_file = f
        from transformers import TokenizersBackend  # costly (seconds): only when a GGUF tokenizer is loaded

        if importlib.util.find_spec("torch") is not None:
            super().__init__(f.parent, pad_id=pad_id, loader=TokenizersBackend, gguf_file=f.name)
        else:
            super().__init__(f.parent, pad_id=pad_id, loader=_Prebuilt(gguf_tokenizer_backend(f)))


class _Prebuilt:
    """A `from_pretrained` that returns an already built transformers tokenizer."""

    def __init__(self, tok: Any):
        self.tok = tok

    def from_pretrained(self, *_: Any, **__: Any) -> Any:
        return self.tok


def gguf_tokenizer_backend(gguf_file: str | pathlib.Path) -> Any:
    """transformers' tokenizer for a GGUF file without torch: the metadata read by the `gguf`
    package, grouped and converted as `TokenizersBackend.from_pretrained(gguf_file=...)` does
    (transformers' `GGUF_TOKENIZER_MAPPING` / `convert_gguf_tokenizer`)."""
    # costly (seconds): only when a GGUF tokenizer is loaded without torch
    from transformers import TokenizersBackend
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    reader = open_reader(gguf_file)
    meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith(("tokenizer.", "general.arch"))}
    grouped = {group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta}
               for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tokenizer, config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tokenizer.get("tokenizer_type") == "llama":
        config.setdefault("add_bos_token", True)  # llama.cpp's default for SentencePiece vocabularies
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        token_id = meta.get(f"tokenizer.ggml.{key}")
        config[name] = tokenizer["tokens"][token_id] if token_id is not None else None
    fast, extra = convert_gguf_tokenizer(meta["general.architecture"], tokenizer)
    return TokenizersBackend(tokenizer_object=fast, **config, **extra)


__all__ = ["GGUFTokenizer", "gguf_tokenizer_backend", "load_tokenizer"]
