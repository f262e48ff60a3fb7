"""One tokenizer interface over a SentencePiece `tokenizer.model` and an HF `tokenizer.json`.

Special tokens are explicit: `encode` never adds BOS/EOS unless asked (`add_bos`, `add_eos`), and
`decode(skip_special=True)` drops BOS/EOS/pad. LLaMA 1/2 have no pad token, so `pad_id` is a
configured id; by default it is the unk id (0 for LLaMA, as Alpaca-LoRA does), or the eos id when
the vocabulary has no unk. Padding never reaches the loss (the data pipeline masks it and marks it
with segment id 0), so the choice only matters for what the padded `input_ids` contain.

Backends:
- `SentencePieceTokenizer`: a SentencePiece model file (LLaMA 1/2, the tiny tokenizer trained by
  `train_sentencepiece`). Ids are exactly `sentencepiece`'s. Note: transformers 5's
  `LlamaTokenizer` is `tokenizers`-backed (converted from the .model) and differs from
  SentencePiece on runs of spaces and on a leading space; `transformers`' `SentencePieceBackend`
  (the slow path) matches. `save()` writes what `AutoTokenizer.from_pretrained` needs.
- `HFTokenizer`: a `tokenizer.json` through the `tokenizers` library (LLaMA 3 and others); special
  tokens come from `tokenizer_config.json` / `special_tokens_map.json` beside it or are guessed
  from the usual names.
- `AutoTokenizerAdapter`: any other directory of tokenizer files, via
  `transformers.AutoTokenizer.from_pretrained(dir, local_files_only=True)` (never the network).

A llama.cpp GGUF model file carries its tokenizer in its metadata: `checkpoint.tokenizer` reads it
(`GGUFTokenizer`, an `AutoTokenizerAdapter`) where GGUF files are read, and its `load_tokenizer`
takes a model path of any kind, GGUF included.

Each tokenizer's own convention says whether a text for the model starts with BOS / ends with EOS:
`adds_bos` / `adds_eos` come from `tokenizer_config.json` (`add_bos_token` / `add_eos_token`),
else from what the tokenizer itself does when asked for special tokens (the `tokenizer.json`
post-processor; GGUF `tokenizer.ggml.add_bos_token` through transformers' conversion).
SentencePiece models without a config keep LLaMA 1/2's rule: BOS, no EOS. `chat_template` is the
tokenizer's jinja chat template or None (`bioinstruct_jax.data.chat` renders it).

`load_tokenizer_files(path)` picks the backend from what is at `path` (a directory holding both a
`tokenizer.model` and a `tokenizer.json` uses the SentencePiece model: exact LLaMA 1/2 ids).
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import sentencepiece as spm
from tokenizers import Tokenizer as _Tok

from bioinstruct_jax.data.journal import write_json_atomic


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline, training, generation and evaluation need from a tokenizer."""

    bos_id: int
    eos_id: int
    pad_id: int
    vocab_size: int
    adds_bos: bool  # the tokenizer's own rule: a text for the model starts with BOS
    adds_eos: bool
    chat_template: str | None

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str: ...

    def id_to_piece(self, i: int) -> str: ...  # the BOS text a chat template may write itself

    def save(self, directory: str | pathlib.Path) -> pathlib.Path: ...


def _wrap(ids: list[int], bos: int, eos: int, add_bos: bool, add_eos: bool) -> list[int]:
    if add_bos:
        ids = [bos] + ids
    if add_eos:
        ids = ids + [eos]
    return ids


class TokenizerFileError(ValueError):
    """A tokenizer file that cannot be read; the message names the file."""


class SentencePieceTokenizer:
    """A SentencePiece model (LLaMA 1/2 style: `<unk>`, `<s>`, `</s>`, no pad)."""

    def __init__(self, model_file: str | pathlib.Path, *, pad_id: int | None = None):
        self.model_file = pathlib.Path(model_file)
        if not self.model_file.is_file():
            raise FileNotFoundError(f"SentencePiece model {self.model_file} does not exist")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        except (RuntimeError, OSError) as exc:  # sentencepiece's own text names no file
            raise TokenizerFileError(f"{self.model_file}: not a SentencePiece model "
                                     f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        self.vocab_size = int(self.sp.get_piece_size())
        self.bos_id = int(self.sp.bos_id())
        self.eos_id = int(self.sp.eos_id())
        self.unk_id = int(self.sp.unk_id())
        if self.bos_id < 0 or self.eos_id < 0:
            raise ValueError(f"{self.model_file}: the model has no BOS ({self.bos_id}) or EOS ({self.eos_id}) piece")
        self.pad_id = _choose_pad(pad_id, int(self.sp.pad_id()), self.unk_id, self.eos_id, self.vocab_size,
                                  str(self.model_file))
        self._special = {i for i in (self.bos_id, self.eos_id, self.pad_id) if i >= 0} | {
            i for i in range(self.vocab_size) if self.sp.is_control(i)}
        cfg = _tokenizer_config(self.model_file.parent)
        self.adds_bos = bool(cfg.get("add_bos_token", True))  # LLaMA 1/2: BOS, no EOS
        self.adds_eos = bool(cfg.get("add_eos_token", False))
        self.chat_template = _chat_template_beside(self.model_file.parent, cfg)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return _wrap(list(self.sp.encode(text)), self.bos_id, self.eos_id, add_bos, add_eos)

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special:
            return self.sp.decode([i for i in ids if i not in self._special])
        out, run = [], []  # SentencePiece drops control pieces: render them by name
        for i in ids:
            if i in self._special:
                out += [self.sp.decode(run), self.sp.id_to_piece(i)]
                run = []
            else:
                run.append(i)
        return "".join(out + [self.sp.decode(run)])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def save(self, directory: str | pathlib.Path) -> pathlib.Path:
        """`tokenizer.model` + `tokenizer_config.json` + `special_tokens_map.json`, loadable by
        `transformers.AutoTokenizer.from_pretrained(directory)` as a LlamaTokenizer."""
        d = pathlib.Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.model_file.resolve() != (d / "tokenizer.model").resolve():
            shutil.copyfile(self.model_file, d / "tokenizer.model")
        names = {"bos_token": self.sp.id_to_piece(self.bos_id), "eos_token": self.sp.id_to_piece(self.eos_id),
                 "unk_token": self.sp.id_to_piece(self.unk_id) if self.unk_id >= 0 else None}
        has_pad = int(self.sp.pad_id()) >= 0
        specials = {**names, "pad_token": self.sp.id_to_piece(self.pad_id) if has_pad else None}
        _write_json(d / "special_tokens_map.json", {k: v for k, v in specials.items() if v is not None})
        _write_json(d / "tokenizer_config.json", {
            "tokenizer_class": "LlamaTokenizer", **{k: v for k, v in names.items() if v is not None},
            "pad_token": self.sp.id_to_piece(self.pad_id) if has_pad else None,
            "add_bos_token": self.adds_bos, "add_eos_token": self.adds_eos, "legacy": True,
            "clean_up_tokenization_spaces": False, "model_max_length": 1_000_000_000,
            "sp_model_kwargs": {},
            **({"chat_template": self.chat_template} if self.chat_template else {}),
            "bioinstruct_pad_id": self.pad_id})
        return d


class HFTokenizer:
    """A `tokenizer.json` via the `tokenizers` library; BOS/EOS added by us (`add_bos`), never by its
    post-processor, whose rule is read into `adds_bos` / `adds_eos` unless tokenizer_config says."""

    def __init__(self, json_file: str | pathlib.Path, *, bos_token: str | None = None, eos_token: str | None = None,
                 pad_id: int | None = None):
        self.json_file = pathlib.Path(json_file)
        if not self.json_file.is_file():
            raise FileNotFoundError(f"tokenizer.json {self.json_file} does not exist")
        try:
            self.tok = _Tok.from_file(str(self.json_file))
        except Exception as exc:  # tokenizers raises a bare Exception naming no file
            raise TokenizerFileError(f"{self.json_file}: not a tokenizer.json the tokenizers library can read "
                                     f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        self.vocab_size = int(self.tok.get_vocab_size(with_added_tokens=True))
        cfg = _special_tokens_beside(self.json_file.parent)
        bos_token = bos_token or cfg.get("bos_token") or _first_present(self.tok, ("<s>", "<|begin_of_text|>", "<bos>", "[CLS]"))
        eos_token = eos_token or cfg.get("eos_token") or _first_present(
            self.tok, ("</s>", "<|end_of_text|>", "<|eot_id|>", "<eos>", "<|endoftext|>", "[SEP]"))
        if bos_token is None or eos_token is None:
            raise ValueError(f"{self.json_file}: cannot tell the BOS/EOS tokens (found bos={bos_token}, eos={eos_token}); "
                             "pass bos_token= / eos_token=")
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_id = self._id(bos_token)
        self.eos_id = self._id(eos_token)
        unk_token = cfg.get("unk_token") or _first_present(self.tok, ("<unk>", "[UNK]"))
        self.unk_token = unk_token
        self.unk_id = self._id(unk_token) if unk_token else -1
        pad_token = cfg.get("pad_token")
        self.pad_id = _choose_pad(pad_id, self._id(pad_token) if pad_token else -1, self.unk_id, self.eos_id,
                                  self.vocab_size, str(self.json_file))
        tcfg = _tokenizer_config(self.json_file.parent)
        plain = self.tok.encode("a", add_special_tokens=False).ids
        full = self.tok.encode("a", add_special_tokens=True).ids
        self.adds_bos = bool(tcfg.get("add_bos_token", full[:1] == [self.bos_id] and plain[:1] != [self.bos_id]))
        self.adds_eos = bool(tcfg.get("add_eos_token", full[-1:] == [self.eos_id] and plain[-1:] != [self.eos_id]))
        self.chat_template = _chat_template_beside(self.json_file.parent, tcfg)

    def _id(self, token: str) -> int:
        i = self.tok.token_to_id(token)
        if i is None:
            raise ValueError(f"{self.json_file}: token {token!r} is not in the vocabulary")
        return int(i)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return _wrap(list(self.tok.encode(text, add_special_tokens=False).ids), self.bos_id, self.eos_id,
                     add_bos, add_eos)

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in (self.bos_id, self.eos_id, self.pad_id)]
        return self.tok.decode(ids, skip_special_tokens=skip_special)

    def id_to_piece(self, i: int) -> str:
        return self.tok.id_to_token(int(i))

    def save(self, directory: str | pathlib.Path) -> pathlib.Path:
        """`tokenizer.json` + `tokenizer_config.json` + `special_tokens_map.json` (PreTrainedTokenizerFast)."""
        d = pathlib.Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(d / "tokenizer.json"))
        names = {"bos_token": self.bos_token, "eos_token": self.eos_token}
        if self.unk_token:
            names["unk_token"] = self.unk_token
        _write_json(d / "special_tokens_map.json", names)
        _write_json(d / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", **names,
                                                  "add_bos_token": self.adds_bos, "add_eos_token": self.adds_eos,
                                                  "clean_up_tokenization_spaces": False,
                                                  "model_max_length": 1_000_000_000,
                                                  **({"chat_template": self.chat_template} if self.chat_template
                                                     else {}),
                                                  "bioinstruct_pad_id": self.pad_id})
        return d


class AutoTokenizerAdapter:
    """Any tokenizer directory transformers can read offline (`AutoTokenizer`, local files only)."""

    def __init__(self, directory: str | pathlib.Path, *, pad_id: int | None = None, loader: Any = None,
                 **from_pretrained: Any):
        if loader is None:
            from transformers import AutoTokenizer as loader  # costly (seconds): only for this backend

        self.directory = pathlib.Path(directory)
        where = self.directory / from_pretrained["gguf_file"] if "gguf_file" in from_pretrained else self.directory
        try:
            self.tok = loader.from_pretrained(str(self.directory), local_files_only=True, **from_pretrained)
        except (ValueError, OSError, KeyError, TypeError) as err:
            raise ValueError(f"{where}: transformers cannot read this tokenizer ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})") from None
        self.vocab_size = int(len(self.tok))
        if self.tok.bos_token_id is None or self.tok.eos_token_id is None:
            raise ValueError(f"{self.directory}: tokenizer has no BOS ({self.tok.bos_token_id}) or "
                             f"EOS ({self.tok.eos_token_id}) token")
        self.bos_id, self.eos_id = int(self.tok.bos_token_id), int(self.tok.eos_token_id)
        self.unk_id = int(self.tok.unk_token_id) if self.tok.unk_token_id is not None else -1
        own_pad = int(self.tok.pad_token_id) if self.tok.pad_token_id is not None else -1
        self.pad_id = _choose_pad(pad_id, own_pad, self.unk_id, self.eos_id, self.vocab_size, str(where))
        plain = list(self.tok.encode("a", add_special_tokens=False))
        full = list(self.tok.encode("a", add_special_tokens=True))
        self.adds_bos = full[:1] == [self.bos_id] and plain[:1] != [self.bos_id]
        self.adds_eos = full[-1:] == [self.eos_id] and plain[-1:] != [self.eos_id]
        self.chat_template = self.tok.chat_template if isinstance(self.tok.chat_template, str) else None

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return _wrap(list(self.tok.encode(text, add_special_tokens=False)), self.bos_id, self.eos_id, add_bos, add_eos)

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in (self.bos_id, self.eos_id, self.pad_id)]
        return self.tok.decode(ids, skip_special_tokens=skip_special, clean_up_tokenization_spaces=False)

    def id_to_piece(self, i: int) -> str:
        return self.tok.convert_ids_to_tokens(int(i))

    def save(self, directory: str | pathlib.Path) -> pathlib.Path:
        d = pathlib.Path(directory)
        self.tok.save_pretrained(str(d))
        return d


def _write_json(path: pathlib.Path, obj: Any) -> None:
    """A tokenizer file in transformers' key order (`journal.write_json_atomic`, keys unsorted)."""
    write_json_atomic(path, obj, sort_keys=False)


def _tokenizer_config(directory: pathlib.Path) -> dict[str, Any]:
    f = directory / "tokenizer_config.json"
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{f}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def _chat_template_beside(directory: pathlib.Path, cfg: dict[str, Any]) -> str | None:
    """The chat template of a tokenizer folder: `chat_template.jinja`, else tokenizer_config's."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = cfg.get("chat_template")
    return template if isinstance(template, str) else None


def _choose_pad(requested: int | None, own: int, unk: int, eos: int, vocab_size: int, where: str) -> int:
    """The pad id: the one asked for, else the tokenizer's own pad, else unk, else eos."""
    if requested is not None:
        if not 0 <= requested < vocab_size:
            raise ValueError(f"{where}: pad_id={requested} is outside the vocabulary [0, {vocab_size})")
        return int(requested)
    for candidate in (own, unk, eos):
        if candidate is not None and candidate >= 0:
            return int(candidate)
    raise ValueError(f"{where}: no pad, unk or eos token to pad with; pass pad_id=")


def _special_tokens_beside(directory: pathlib.Path) -> dict[str, str]:
    """bos/eos/unk/pad token strings from tokenizer_config.json / special_tokens_map.json."""
    out: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = directory / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{f}: not valid JSON ({exc})") from None
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and key not in out:
                out[key] = value
    return out


def _first_present(tok: Any, names: Iterable[str]) -> str | None:
    for name in names:
        if tok.token_to_id(name) is not None:
            return name
    return None


def has_tokenizer_files(directory: str | pathlib.Path) -> bool:
    """Whether `load_tokenizer_files` finds tokenizer files in `directory`."""
    d = pathlib.Path(directory)
    names = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json")
    return d.is_dir() and (any((d / name).is_file() for name in names) or len(list(d.glob("*.model"))) == 1)


def load_tokenizer_files(path: str | pathlib.Path, *, pad_id: int | None = None) -> Tokenizer:
    """The tokenizer at `path`: a `.model` file, a `tokenizer.json`, or a directory holding one
    (SentencePiece preferred), or else any directory AutoTokenizer reads offline."""
    p = pathlib.Path(path)
    if p.is_file():
        if p.suffix.lower() == ".gguf":
            raise ValueError(f"{p}: a GGUF model file; its tokenizer loads with "
                             "bioinstruct_jax.checkpoint.tokenizer.load_tokenizer")
        if p.suffix == ".json":
            return HFTokenizer(p, pad_id=pad_id)
        return SentencePieceTokenizer(p, pad_id=pad_id)
    if p.is_dir():
        if (p / "tokenizer.model").is_file():
            return SentencePieceTokenizer(p / "tokenizer.model", pad_id=pad_id)
        if (p / "tokenizer.json").is_file():
            return HFTokenizer(p / "tokenizer.json", pad_id=pad_id)
        models = sorted(p.glob("*.model"))
        if len(models) == 1:
            return SentencePieceTokenizer(models[0], pad_id=pad_id)
        if (p / "tokenizer_config.json").is_file():
            return AutoTokenizerAdapter(p, pad_id=pad_id)
        raise FileNotFoundError(f"{p}: no tokenizer.model, tokenizer.json or tokenizer_config.json in it "
                                f"(found: {sorted(x.name for x in p.iterdir())[:20]})")
    raise FileNotFoundError(f"tokenizer path {p} does not exist")


def train_sentencepiece(texts: Iterable[str], vocab_size: int, out_dir: str | pathlib.Path, *,
                        model_prefix: str = "tokenizer", model_type: str = "bpe",
                        character_coverage: float = 1.0) -> pathlib.Path:
    """Train a LLaMA-style SentencePiece model on `texts`; returns `out_dir/tokenizer.model`.

    LLaMA's settings: BPE with byte fallback (no text is ever `<unk>`), `<unk>`=0, `<s>`=1,
    `</s>`=2, no pad, digits split, no whitespace normalisation, a dummy prefix space.
    Deterministic for the same texts (one thread, every sentence used). `vocab_size` must hold
    3 specials + 256 byte pieces + every distinct character of the texts, and be small enough for
    the texts to fill (BPE merges).
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_sentencepiece: no non-empty texts to train on")
    if vocab_size < 259:
        raise ValueError(f"train_sentencepiece: vocab_size={vocab_size} < 259 (3 specials + 256 byte pieces)")
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_prefix=str(out / model_prefix), vocab_size=vocab_size,
            model_type=model_type, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True,
            split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
            normalization_rule_name="identity", add_dummy_prefix=True, character_coverage=character_coverage,
            num_threads=1, input_sentence_size=0, shuffle_input_sentence=False, max_sentence_length=1 << 16,
            minloglevel=2)
    except RuntimeError as exc:
        raise ValueError(f"train_sentencepiece: training on {len(texts)} texts with vocab_size={vocab_size} "
                         f"failed: {exc}") from None
    return out / f"{model_prefix}.model"


__all__ = ["Tokenizer", "SentencePieceTokenizer", "HFTokenizer", "AutoTokenizerAdapter", "has_tokenizer_files",
           "load_tokenizer_files", "train_sentencepiece"]
