"""The training data pipeline (grain): records -> prompt template -> tokens -> response-only loss
mask -> truncation -> optional packing -> fixed-shape batches, sharded per host, resumable.

Records come from a random-access source: a JSON / JSON-lines file (split into train/validation by
record hash, as the TFDS builder does), the TFDS `bioinstruct` builder (`tfds_config` set: built
once from `train_file` into `tfds_data_dir`, array_record, read with `as_data_source`), or any
sequence of record dicts passed in.

One example is `<s> prompt response </s>` (BOS only when the tokenizer's own rule adds one,
`adds_bos`; with the `chat` template, the chat-rendered prompt and the reply closed by the
template's end-of-turn token); `input_ids` are all tokens but the last, `targets` all but the
first, and `loss_mask` is 1 exactly where the target is a response token or the EOS / end-of-turn.
Truncation (at most `max_length` input positions): the prompt gives way first (its head is cut from
the end, the response header is kept); when even the response does not fit, the example is dropped
and counted (`count_examples`), never silently. Packing puts several examples in one row
(grain's first-fit packing) with segment ids 1, 2, ... (0 = padding) and positions restarting at
0 per segment; the model attends only within a segment.

Per host: the record stream (after the seeded per-epoch shuffle) is cut into global batches of
`batch_size` consecutive records, and each host loads its rows of every global batch (`host_rows`:
the positions its devices hold, from `distributed.host_batch_rows`; by default an equal contiguous
block per process). So the hosts' batches, placed at their rows, are exactly the batch one process
would build, and the validation split gives every host the same number of batches (rows past the
end, and validation examples that do not fit, are padding rows with a zero loss mask). Iterators
are deterministic for a seed and have `get_state()` / `set_state()` (JSON-able) for resume; the
hosts' states differ, and each host saves its own.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np

from bioinstruct_jax.config.sections import DataConfig
from bioinstruct_jax.data import chat, templates
from bioinstruct_jax.data.batch import BATCH_DTYPES, BATCH_KEYS
from bioinstruct_jax.data.records import InstructionRecord, read_instruction_file
from bioinstruct_jax.data.tfds import bioinstruct
from bioinstruct_jax.data.tfds.bioinstruct import SPLIT_SALT, record_from_example, record_key
from bioinstruct_jax.data.tfds.common import hash_split

_PACK_KEYS = ("input_ids", "targets", "loss_mask")


# ------------------------------------------------------------------------------------------------
# One example


@dataclasses.dataclass(frozen=True)
class EncodedExample:
    """Shifted tokens of one example: input_ids / targets / loss_mask, all the same length."""

    input_ids: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray
    prompt_truncated: bool = False
    prompt_tokens_dropped: int = 0

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "targets": self.targets, "loss_mask": self.loss_mask}


class ExampleEncoder:
    """record -> EncodedExample (or None when even the response does not fit)."""

    def __init__(self, tokenizer: Any, max_length: int, template: str = templates.DEFAULT_TEMPLATE):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.chat = template == templates.CHAT_TEMPLATE
        self.template = None if self.chat else templates.get_template(template)
        self.bos, self.eos = int(tokenizer.bos_id), int(tokenizer.eos_id)
        self.bos_prefix = [self.bos] if getattr(tokenizer, "adds_bos", True) else []  # the tokenizer's own rule

    def __call__(self, record: Mapping[str, Any]) -> EncodedExample | None:
        messages = record.get("messages") if isinstance(record, Mapping) else None
        if messages:
            if not self.chat:
                raise ValueError(f"a conversation record (messages / conversations) needs data.template="
                                 f"{templates.CHAT_TEMPLATE}, not {self.template.name!r}: the tokenizer's chat "
                                 "template renders it")
            return self._encode_conversation(messages)
        if self.chat:
            return self._encode_chat(record)
        prompt, response = templates.format_example(record, self.template.name)
        resp = list(self.tokenizer.encode(response)) + [self.eos]
        budget = self.max_length + 1 - len(self.bos_prefix) - len(resp)  # tokens = max_length + 1 (shift)
        if budget <= 0:
            return None
        ids = list(self.tokenizer.encode(prompt))
        truncated, dropped = len(ids) > budget, 0
        if truncated:  # keep the response header, cut the head (preamble/instruction/input) from its end
            rec = {k: templates._field(record, k) for k in ("instruction", "input")}
            tail = list(self.tokenizer.encode(self.template.tail()))
            if len(tail) >= budget:
                return None
            head = list(self.tokenizer.encode(self.template.head(rec["instruction"].strip(), rec["input"].strip())))
            ids = head[: budget - len(tail)] + tail
            dropped = len(head) - (budget - len(tail))
        return self._example(self.bos_prefix + ids, resp, dropped)

    @staticmethod
    def _example(prompt_ids: list[int], resp: list[int], dropped: int) -> EncodedExample:
        tokens = np.asarray(prompt_ids + resp, np.int32)
        mask = np.zeros(len(tokens) - 1, np.float32)
        mask[-len(resp):] = 1.0  # targets that are response tokens or the EOS / end-of-turn token
        return EncodedExample(tokens[:-1], tokens[1:], mask, dropped > 0, max(int(dropped), 0))

    def _encode_chat(self, record: Mapping[str, Any]) -> EncodedExample | None:
        """The record as a user turn + assistant turn in the tokenizer's chat template; the loss
        covers the reply and its end-of-turn token (EOS appended when the template has none).
        A long prompt loses the end of its user message (instruction / input), never the template."""
        instruction, input_text = (templates._field(record, k).strip() for k in ("instruction", "input"))
        reply = {"role": "assistant", "content": templates._field(record, "output")}

        def render(user: str) -> tuple[list[int], list[int]]:
            prompt, answer, _ = chat.split_turn(self.tokenizer, [{"role": "user", "content": user}, reply])
            head = [] if chat.starts_with_bos_text(self.tokenizer, prompt) else self.bos_prefix
            resp = chat.encode_rendered(self.tokenizer, answer)
            if chat.end_of_turn_id(self.tokenizer) is None:
                resp = resp + [self.eos]
            return head + chat.encode_rendered(self.tokenizer, prompt), resp

        user = chat.user_message(instruction, input_text)["content"]
        prompt_ids, resp = render(user)
        excess = len(prompt_ids) + len(resp) - (self.max_length + 1)
        truncated = excess > 0
        if truncated:
            user_ids = self.tokenizer.encode(user)
            if excess >= len(user_ids):
                return None
            prompt_ids, resp = render(self.tokenizer.decode(user_ids[: len(user_ids) - excess]))
            if len(prompt_ids) + len(resp) > self.max_length + 1:
                return None
        return self._example(prompt_ids, resp, excess if truncated else 0)


    def _encode_conversation(self, messages: Sequence[Mapping[str, str]]) -> EncodedExample | None:
        """A whole conversation through the chat template; the loss covers every assistant turn
        (its reply and end-of-turn token, as `chat.split_turn` cuts it) and nothing else. Rendered
        turn by turn: the text before each assistant turn is the conversation so far with the
        generation prompt, which must be a prefix of the whole rendering. A conversation longer than
        data.max_length keeps its first turns: it is cut after the last assistant turn that fits
        (dropped when not even the first one fits)."""
        messages = [dict(m) for m in messages]
        ids: list[int] = []
        mask: list[float] = []
        rendered = ""
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        kept_ids: list[int] | None = None
        kept_mask: list[float] = []
        full = False
        for i in turns:
            prompt, answer, _ = chat.split_turn(self.tokenizer, messages[: i + 1])
            if not prompt.startswith(rendered):
                raise chat.ChatTemplateError(f"{chat._where(self.tokenizer)}: the chat template renders the "
                                             f"conversation up to turn {i} differently from its whole; cannot "
                                             "mark the assistant turns")
            head = chat.encode_rendered(self.tokenizer, prompt[len(rendered):])
            if not ids and not chat.starts_with_bos_text(self.tokenizer, prompt):
                head = self.bos_prefix + head
            resp = chat.encode_rendered(self.tokenizer, answer)
            if chat.end_of_turn_id(self.tokenizer) is None:
                resp = resp + [self.eos]
            ids += head + resp
            mask += [0.0] * len(head) + [1.0] * len(resp)
            rendered = prompt + answer
            if len(ids) > self.max_length + 1:
                if kept_ids is None:
                    return None  # not even the first assistant turn fits
                full = True
            elif not full:
                kept_ids, kept_mask = list(ids), list(mask)
        if kept_ids is None:
            return None
        dropped = len(ids) - len(kept_ids)
        tokens = np.asarray(kept_ids, np.int32)
        return EncodedExample(tokens[:-1], tokens[1:], np.asarray(kept_mask[1:], np.float32), dropped > 0, dropped)


def count_examples(records: Sequence[Mapping[str, Any]], encoder: ExampleEncoder) -> dict[str, int]:
    """{examples, kept, prompt_truncated, prompt_tokens_dropped, largest_prompt_cut,
    dropped_response_too_long, tokens, response_tokens} of a split."""
    c = collections.Counter(examples=0, kept=0, prompt_truncated=0, prompt_tokens_dropped=0, largest_prompt_cut=0,
                            dropped_response_too_long=0, tokens=0, response_tokens=0)
    for i in range(len(records)):  # by index: a TFDS source raises ValueError, not IndexError, past its end
        c["examples"] += 1
        ex = encoder(records[i])
        if ex is None:
            c["dropped_response_too_long"] += 1
            continue
        c["kept"] += 1
        c["prompt_truncated"] += int(ex.prompt_truncated)
        c["prompt_tokens_dropped"] += ex.prompt_tokens_dropped
        c["largest_prompt_cut"] = max(c["largest_prompt_cut"], ex.prompt_tokens_dropped)
        c["tokens"] += len(ex.input_ids)
        c["response_tokens"] += int(ex.loss_mask.sum())
    return dict(c)


def cut_note(counts: Mapping[str, int], max_length: int, split: str = "training") -> str | None:
    """The one line a training command prints about its split's cuts (`count_examples`' counts):
    prompts cut to fit `data.max_length`, and examples left out because even their response does
    not fit; None when nothing was cut."""
    parts = []
    if counts.get("prompt_truncated"):
        parts.append(f"{counts['prompt_truncated']} of {counts['examples']} {split} examples had their prompt cut "
                     f"to fit data.max_length={max_length}: {counts['prompt_tokens_dropped']:,} tokens dropped from "
                     f"the end of the instruction / input, the response header kept (conversations: their last "
                     f"turns) (at most "
                     f"{counts['largest_prompt_cut']:,} from one)")
    if counts.get("dropped_response_too_long"):
        parts.append(f"{counts['dropped_response_too_long']} of {counts['examples']} {split} examples are left out: "
                     f"their response and EOS alone exceed data.max_length={max_length}")
    return "note: " + "; ".join(parts) if parts else None


# ------------------------------------------------------------------------------------------------
# Sources


def read_records(path: str | pathlib.Path, *, skip_malformed: bool = False) -> list[dict[str, str]]:
    """Records of a JSON array / JSON lines file as dicts (errors name file and line)."""
    recs, _ = read_instruction_file(path, skip_malformed=skip_malformed)
    return [r.to_dict() for r in recs]


class _DecodedSource:
    """A TFDS data source whose text features come back as str."""

    def __init__(self, source: Any):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, str]:
        return record_from_example(self.source[i])


def _check_conversations(records: list[dict[str, Any]], cfg: DataConfig, path: str) -> list[dict[str, Any]]:
    """Conversation records train only with the chat template (which renders the whole conversation)."""
    if cfg.template != templates.CHAT_TEMPLATE:
        first = next((i for i, r in enumerate(records) if r.get("messages")), None)
        if first is not None:
            raise ValueError(f"{path}: record {first} is a conversation (messages / conversations); conversations "
                             f"train with data.template={templates.CHAT_TEMPLATE} (the tokenizer's chat template), "
                             f"not {cfg.template}")
    return records


def load_split(cfg: DataConfig, split: str) -> Sequence[Mapping[str, Any]]:
    """The records of `split` ("train" / "val" / "validation") named by the config."""
    split = "validation" if split in ("val", "validation", "eval") else split
    if split not in ("train", "validation"):
        raise ValueError(f"unknown split {split!r}; expected train or validation")
    if not cfg.train_file:
        raise ValueError("data.train_file is not set")
    if cfg.tfds_config:
        data_dir = cfg.tfds_data_dir or str(pathlib.Path.home() / "tensorflow_datasets")
        _, sources = bioinstruct.data_sources(data_dir, cfg.tfds_config, source_path=cfg.train_file,
                                              labels_path=cfg.labels_file or None, skip_malformed=cfg.skip_malformed,
                                              validation_fraction=cfg.val_fraction, subset_seed=cfg.seed)
        if split == "validation" and cfg.val_file:
            return read_records(cfg.val_file, skip_malformed=cfg.skip_malformed)
        return _DecodedSource(sources[split])
    if split == "validation" and cfg.val_file:
        return _check_conversations(read_records(cfg.val_file, skip_malformed=cfg.skip_malformed), cfg, cfg.val_file)
    records = read_records(cfg.train_file, skip_malformed=cfg.skip_malformed)
    _check_conversations(records, cfg, cfg.train_file)
    if cfg.val_file:
        return records  # the whole file trains
    return [r for r in records
            if hash_split(record_key(InstructionRecord(**r)), cfg.val_fraction, SPLIT_SALT) == split]


# ------------------------------------------------------------------------------------------------
# Batches


def _pad_rows(rows: Sequence[Mapping[str, np.ndarray]], n_rows: int, length: int, pad_id: int) -> dict[str, np.ndarray]:
    out = {key: np.zeros((n_rows, length), BATCH_DTYPES[key]) for key in BATCH_KEYS}
    out["input_ids"][:] = pad_id
    for i, r in enumerate(rows):
        if not r:  # a padding row
            continue
        n = len(r["input_ids"])
        out["input_ids"][i, :n] = r["input_ids"]
        out["targets"][i, :n] = r["targets"]
        out["loss_mask"][i, :n] = r["loss_mask"]
        out["segment_ids"][i, :n] = r.get("segment_ids", 1)
        out["positions"][i, :n] = r["positions"] if "positions" in r else np.arange(n)
    return out


def padding_batch(rows: int, length: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """A batch of `rows` padding rows (nothing to learn or score: the loss mask is zero)."""
    return _pad_rows([], rows, length, pad_id)


def _packed_row(x: Mapping[str, np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
    seg = np.asarray(x["input_ids_segment_ids"], np.int32)
    ids = np.where(seg > 0, x["input_ids"], pad_id).astype(np.int32)
    return {"input_ids": ids, "targets": np.asarray(x["targets"], np.int32),
            "loss_mask": np.asarray(x["loss_mask"], np.float32), "segment_ids": seg,
            "positions": np.asarray(x["input_ids_positions"], np.int32)}


def build_dataset(records: Sequence[Mapping[str, Any]], tokenizer: Any, cfg: DataConfig, *, train: bool,
                  process_index: int = 0, process_count: int = 1,
                  host_rows: Sequence[int] | None = None) -> grain.IterDataset:
    """The grain dataset of this host's fixed-shape batches (see the module docstring).

    host_rows: the positions (0 .. batch_size-1) of each global batch this host loads, in the
    order of its local batch; default: block `process_index` of `process_count` equal blocks.
    """
    if host_rows is None:
        if cfg.batch_size % process_count:
            raise ValueError(f"data.batch_size={cfg.batch_size} is not divisible by process_count={process_count}")
        per = cfg.batch_size // process_count
        host_rows = range(process_index * per, (process_index + 1) * per)
    host_rows = [int(r) for r in host_rows]
    if not host_rows or any(not 0 <= r < cfg.batch_size for r in host_rows):
        raise ValueError(f"host rows {host_rows} are not positions of a batch of data.batch_size={cfg.batch_size}")
    if len(records) == 0:
        raise ValueError(f"data: the {'training' if train else 'validation'} split is empty")
    rows = len(host_rows)
    length = cfg.max_length
    pad_id = int(cfg.pad_id if cfg.pad_id is not None else getattr(tokenizer, "pad_id", 0))
    encoder = ExampleEncoder(tokenizer, cfg.max_length, cfg.template)
    n = len(records)
    if train:  # epoch e is np.random.default_rng([seed, e]).permutation (a new order every epoch)
        order = _EpochOrder(n, cfg.seed, cfg.shuffle)
        stream_len = len(grain.MapDataset.range(n).repeat(cfg.num_epochs))
    else:  # one pass, the last global batch padded
        order, stream_len = (lambda i: i), n
    n_batches = -(-stream_len // cfg.batch_size)  # training: rows past the end are skipped, as drops are
    n_batches = min(n_batches, sys.maxsize // cfg.batch_size)  # a stream that repeats forever has length maxsize
    batch_size = cfg.batch_size

    def record_at(k: int):  # k-th row this host loads -> its record, or None past the end
        g = (k // rows) * batch_size + host_rows[k % rows]
        return records[order(g)] if g < stream_len else None

    ds = grain.MapDataset.range(n_batches * rows).map(record_at)
    ds = ds.map(lambda r: _PADDING if r is None else (encoder(r) or _DROPPED))  # not None: grain's prefetch would skip Nones
    if train or cfg.packing:  # examples that do not fit are skipped (validation with packing: hosts differ anyway)
        fits = _FitsGuard(-(-n // max(1, batch_size // rows)), cfg.max_length, "training" if train else "validation")
        it = ds.to_iter_dataset().filter(lambda ex: ex is not _PADDING).filter(fits).map(lambda ex: ex.as_dict())
    else:  # validation: a padding row in place of an example that does not fit, so hosts stay in step
        it = ds.to_iter_dataset().map(lambda ex: {} if isinstance(ex, str) else ex.as_dict())
    if cfg.packing:
        it = grain.experimental.FirstFitPackIterDataset(
            it, length_struct={k: length for k in _PACK_KEYS}, num_packing_bins=rows, seed=cfg.seed,
            shuffle_bins=False)
        it = it.map(lambda x: _packed_row(x, pad_id))
    return it.batch(rows, drop_remainder=train, batch_fn=lambda b: _pad_rows(b, rows, length, pad_id))


_PADDING = "past the end of the split"  # a validation row with nothing in it
_DROPPED = "response does not fit"  # what the encoder's None becomes in the grain stream


class _FitsGuard:
    """The filter that drops examples whose response does not fit (`ExampleEncoder` gave None).

    When no record fits, a repeating stream would spin forever looking for the next batch; more
    drops in a row than two epochs can hold (a fitting record appears in every epoch) is an error
    that says what to change.
    """

    def __init__(self, n_records: int, max_length: int, split: str):
        self.n_records, self.max_length, self.split = n_records, max_length, split
        self.dropped_in_a_row = 0

    def __call__(self, example: EncodedExample | str) -> bool:
        if example is not _DROPPED:
            self.dropped_in_a_row = 0
            return True
        self.dropped_in_a_row += 1
        if self.dropped_in_a_row >= 2 * self.n_records:  # > the longest run between two epochs' fits
            raise ValueError(f"data: none of the {self.n_records} {self.split} records fits data.max_length="
                             f"{self.max_length} (every response plus EOS is longer); raise data.max_length")
        return False


class _EpochOrder:
    """Global index -> record index: a seeded permutation per epoch (numpy's, well mixed even for
    a few dozen records), the identity when not shuffling."""

    def __init__(self, n: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._epoch, self._perm = -1, None

    def __call__(self, i: int) -> int:
        epoch, j = divmod(int(i), self.n)
        if not self.shuffle:
            return j
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return int(self._perm[j])


class BatchIterator:
    """Batches of one split; `get_state()` / `set_state()` resume exactly; `stats` counts truncation."""

    def __init__(self, records: Sequence[Mapping[str, Any]], tokenizer: Any, cfg: DataConfig, *, train: bool,
                 process_index: int = 0, process_count: int = 1, host_rows: Sequence[int] | None = None):
        self.records, self.tokenizer, self.cfg, self.train = records, tokenizer, cfg, train
        self.num_examples = len(records)
        self.dataset = build_dataset(records, tokenizer, cfg, train=train, process_index=process_index,
                                     process_count=process_count, host_rows=host_rows)
        self._it = iter(self.dataset)

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)

    def get_state(self) -> dict[str, Any]:
        return self._it.get_state()

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._it.set_state(dict(state))

    def stats(self) -> dict[str, int]:
        """Truncation / drop counts over one pass of this split (tokenizes every record once)."""
        return count_examples(self.records, ExampleEncoder(self.tokenizer, self.cfg.max_length, self.cfg.template))


def make_batch_iterator(cfg: DataConfig, tokenizer: Any, split: str = "train", *,
                  records: Sequence[Mapping[str, Any]] | None = None, process_index: int | None = None,
                  process_count: int | None = None, host_rows: Sequence[int] | None = None) -> BatchIterator:
    """This host's batch iterator of `split` (train: shuffled, `num_epochs` or forever; val: one pass,
    the last batch padded). `records` overrides the config's source (any random-access sequence);
    `host_rows` the rows of each global batch this host loads (see `build_dataset`)."""
    if process_index is None or process_count is None:
        process_index, process_count = jax.process_index(), jax.process_count()
    train = split == "train"
    if records is None:
        records = load_split(cfg, split)
    return BatchIterator(records, tokenizer, cfg, train=train, process_index=process_index,
                         process_count=process_count, host_rows=host_rows)


def make_data_factory(cfg: DataConfig, tokenizer: Any, *, host_rows: Sequence[int] | None = None
                      ) -> Callable[[str], BatchIterator]:
    """split -> this host's iterator, with `num_examples` (training records) for epoch-based step
    counts; `host_rows` as in `build_dataset` (default: this process's equal block)."""
    records = {"train": load_split(cfg, "train")}

    def factory(split: str) -> BatchIterator:
        split = "train" if split == "train" else "validation"
        if split not in records:  # read once, not at every validation
            records[split] = load_split(cfg, split)
        return make_batch_iterator(cfg, tokenizer, split, records=records[split], host_rows=host_rows)

    def batches_per_epoch() -> float:
        """Global batches in one pass over the training split. Unpacked, one row is one record; packed,
        a row holds several, so the pass is packed and counted as one host loading every row of each
        batch packs it (the same count on every host, so all hosts run the same number of steps)."""
        if not cfg.packing:
            return len(records["train"]) / cfg.batch_size
        one_pass = dataclasses.replace(cfg, num_epochs=1)
        it = make_batch_iterator(one_pass, tokenizer, "train", records=records["train"], process_index=0,
                                 process_count=1, host_rows=range(cfg.batch_size))
        return sum(1 for _ in it)

    factory.num_examples = len(records["train"])  # type: ignore[attr-defined]
    factory.batches_per_epoch = batches_per_epoch  # type: ignore[attr-defined]
    factory.cut_note = lambda: cut_note(  # type: ignore[attr-defined]  # tokenizes the training split once
        count_examples(records["train"], ExampleEncoder(tokenizer, cfg.max_length, cfg.template)), cfg.max_length)
    return factory


__all__ = ["BATCH_KEYS", "DataConfig", "EncodedExample", "ExampleEncoder", "count_examples", "cut_note", "read_records",
           "load_split", "padding_batch", "build_dataset", "BatchIterator", "make_batch_iterator", "make_data_factory"]
