"""TFDS builder `bioinstruct`: the published BioInstruct 25K instructions (or any file of the same
shape) as array_record, with category and size configs for the paper's ablation and data-size curve.

Source (see `common.SourceFileBuilder`): `source_path=`, `manual_dir/biomed_instruct_25k.json`, or
a download of the published file (`SOURCE_URL`, for users who can reach it; never in tests). The
file is a JSON array or JSON lines of objects with instruction, input, output, and optional
category (qa / ie / gen / other) and id. Categories may instead come from `labels_path`: JSON lines
of {"id" or "instruction", "category"} (the published file carries no labels; the paper's GPT-4
labels are not published, so a user labels it, e.g. with
`python -m bioinstruct_jax.data.generate --label-only --input FILE`).

Configs: `all`, `qa`, `ie`, `gen`, `other`; `all_5k` ... `all_25k` (and any `<category>_<n>[k]`
through `config_from_name`). Choices where the paper is silent:
- validation: a record goes to `validation` when the sha256 of its (instruction, input, output)
  falls under `validation_fraction` (default 2%) — the same records for every config, so
  validation losses along the data-size curve are comparable, and duplicates never straddle splits;
- a size subset counts *training* records: the first n of the category's training records in a
  seeded hash order (independent of file order), so all_5k ⊂ all_10k ⊂ ...; a size above what is
  there keeps everything (all_25k = the whole 24.5K training split of the 25,005 records).
A malformed record raises `RecordError` naming file and line (or is counted in
`info.metadata["num_skipped"]` and skipped with `skip_malformed=True`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds

from bioinstruct_jax.data.records import InstructionRecord, RecordError, label_keys, read_instruction_file, read_utf8
from bioinstruct_jax.data.tfds import common

HUB_URL = "https://huggingface.co/datasets/bio-nlp-umass/bioinstruct/resolve/main/biomed_instruct_25k.json"
DEFAULT_VALIDATION_FRACTION = 0.02
SPLIT_SALT = "bioinstruct-split"
PAPER_SIZES = (5_000, 10_000, 15_000, 20_000, 25_000)


# ------------------------------------------------------------------------------------------------
# Labels (records are read by `records.read_instruction_file`)


def read_labels(path: str | pathlib.Path) -> dict[str, str]:
    """A labels file (JSON lines of {"id" or "instruction", "category"}) as {"id:..." / "ins:...": category}."""
    path = pathlib.Path(path)
    labels: dict[str, str] = {}
    for lineno, line in enumerate(read_utf8(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        cat, keys = label_keys(obj, f"{path}:{lineno}")
        labels.update(dict.fromkeys(keys, cat))
    return labels


# ------------------------------------------------------------------------------------------------
# Configs, split and subsets


@dataclasses.dataclass(eq=False)
class BioinstructConfig(tfds.core.BuilderConfig):
    """category: None = every category; size: training records kept (None = all)."""

    category: str | None = None
    size: int | None = None
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    subset_seed: int = 0


_NAME = re.compile(r"^(all|qa|ie|gen|other)(?:_(\d+)(k?))?$")


def config_from_name(name: str, *, validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
                     subset_seed: int = 0) -> BioinstructConfig:
    """`all`, `qa`, `all_5k`, `gen_2000`, ... as a config."""
    m = _NAME.match(name)
    if not m:
        raise ValueError(f"bioinstruct config {name!r}: expected <all|qa|ie|gen|other>[_<n>[k]], e.g. all_5k")
    cat, n, k = m.groups()
    size = int(n) * (1000 if k else 1) if n else None
    if size is not None and size < 1:
        raise ValueError(f"bioinstruct config {name!r}: size must be positive")
    desc = f"{'all categories' if cat == 'all' else cat + ' records'}" + (f", {size} training records" if size else "")
    full = name  # non-default settings are part of the name, so each gets its own prepared directory
    if validation_fraction != DEFAULT_VALIDATION_FRACTION or subset_seed != 0:
        full = f"{name}.val{validation_fraction:g}.seed{subset_seed}"
    return BioinstructConfig(name=full, description=desc, category=None if cat == "all" else cat, size=size,
                             validation_fraction=validation_fraction, subset_seed=subset_seed)


BUILDER_CONFIG_NAMES = ("all", "qa", "ie", "gen", "other") + tuple(f"all_{n // 1000}k" for n in PAPER_SIZES)


def record_key(rec: InstructionRecord) -> str:
    if rec.messages is not None:  # a conversation: all its turns
        return "\x00".join(f"{m['role']}\x01{m['content']}" for m in rec.messages)
    return "\x00".join((rec.instruction, rec.input, rec.output))


def split_and_subset(records: list[InstructionRecord], config: BioinstructConfig
                     ) -> dict[str, list[InstructionRecord]]:
    """{"train": ..., "validation": ...} of one config (records must carry categories for a category config)."""
    if config.category is not None:
        unlabelled = sum(1 for r in records if not r.category)
        if unlabelled:
            raise ValueError(f"bioinstruct config {config.name!r} selects category {config.category!r}, but "
                             f"{unlabelled} of {len(records)} records have no category: add a 'category' field "
                             "or pass labels_path (JSON lines of {id or instruction, category})")
        records = [r for r in records if r.category == config.category]
    out: dict[str, list[InstructionRecord]] = {"train": [], "validation": []}
    for r in records:
        out[common.hash_split(record_key(r), config.validation_fraction, SPLIT_SALT)].append(r)
    if config.size is not None:
        salt = f"bioinstruct-subset-{config.subset_seed}"
        order = sorted(range(len(out["train"])), key=lambda i: (common.hash_fraction(record_key(out["train"][i]), salt), i))
        keep = sorted(order[: config.size])  # file order within the subset
        out["train"] = [out["train"][i] for i in keep]
    return out


# ------------------------------------------------------------------------------------------------
# The builder


class Bioinstruct(common.SourceFileBuilder):
    """BioInstruct instructions; features id, instruction, input, output, category (all text)."""

    name = "bioinstruct"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: category and size configs, hash-based 2% validation split."}
    BUILDER_CONFIGS = [config_from_name(n) for n in BUILDER_CONFIG_NAMES]
    DEFAULT_CONFIG_NAME = "all"
    SOURCE_FILENAME = "biomed_instruct_25k.json"
    SOURCE_URL = HUB_URL
    SOURCE_SHA256 = None  # not recorded here (no network where this was written); TFDS registers it on download
    MANUAL_DOWNLOAD_INSTRUCTIONS = (f"Put biomed_instruct_25k.json (the published BioInstruct file, {HUB_URL}) "
                                    "or any JSON array / JSON lines file of instruction records in manual_dir "
                                    "under that name, or pass source_path=.")

    def __init__(self, *, labels_path: str | pathlib.Path | None = None, skip_malformed: bool = False,
                 **kwargs: Any):
        self.labels_path = pathlib.Path(labels_path) if labels_path else None
        self.skip_malformed = skip_malformed
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({k: text for k in ("id", "instruction", "input", "output", "category")}),
            homepage="https://github.com/bio-nlp/BioInstruct",
            description="BioInstruct biomedical instructions (instruction, input, output, category).",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        path = self.source_file(dl_manager)
        records, skipped = read_instruction_file(path, skip_malformed=self.skip_malformed)
        chats = [i for i, r in enumerate(records) if r.messages is not None]
        if chats:
            raise RecordError(f"{path}: record {chats[0]} (and {len(chats) - 1} more) is a conversation (messages / "
                              "conversations); the TFDS builder stores instruction records only: train conversations "
                              "from the file itself (leave data.tfds_config empty)")
        if self.labels_path is not None:
            labels = read_labels(self.labels_path)
            for r in records:
                r.category = labels.get(f"id:{r.id}") or labels.get(f"ins:{r.instruction.strip()}") or r.category
        for i, r in enumerate(records):
            if not r.id:
                r.id = f"{path.stem}-{i:06d}"
        splits = split_and_subset(records, self.builder_config)
        self.info.metadata.update({"num_skipped": skipped, "num_source_records": len(records),
                                   "source": str(path)})
        # TFDS cannot write an empty split: it is left out (data_sources() gives [] for it)
        return {name: self._generate_examples(recs) for name, recs in splits.items() if recs}

    def _generate_examples(self, records: list[InstructionRecord]) -> Iterator[tuple[str, dict[str, str]]]:
        seen: dict[str, int] = {}
        for r in records:
            key = r.id if r.id not in seen else f"{r.id}#{seen[r.id]}"  # TFDS keys must be unique
            seen[r.id] = seen.get(r.id, 0) + 1
            yield key, r.to_dict()


def as_config(name_or_config: str | BioinstructConfig, *, validation_fraction: float | None = None,
              subset_seed: int = 0) -> BioinstructConfig | str:
    """A registered config name as is (unless other settings are asked), else a parsed config."""
    if isinstance(name_or_config, BioinstructConfig):
        return name_or_config
    vf = DEFAULT_VALIDATION_FRACTION if validation_fraction is None else validation_fraction
    if name_or_config in BUILDER_CONFIG_NAMES and vf == DEFAULT_VALIDATION_FRACTION and subset_seed == 0:
        return name_or_config
    return config_from_name(name_or_config, validation_fraction=vf, subset_seed=subset_seed)


def data_sources(data_dir: str | pathlib.Path, config: str | BioinstructConfig = "all", *,
                 source_path: str | pathlib.Path | None = None, manual_dir: str | pathlib.Path | None = None,
                 labels_path: str | pathlib.Path | None = None, skip_malformed: bool = False,
                 validation_fraction: float | None = None, subset_seed: int = 0) -> tuple[Bioinstruct, Any]:
    """(prepared builder, {split: data source}) for one config (built once per source content);
    a split with no records is an empty list."""
    cfg = as_config(config, validation_fraction=validation_fraction, subset_seed=subset_seed)
    builder = common.prepare_builder(Bioinstruct, data_dir=data_dir, config=cfg, source_path=source_path,
                                     manual_dir=manual_dir, labels_path=labels_path, skip_malformed=skip_malformed)
    return builder, {**{s: [] for s in common.SPLITS}, **builder.as_data_source()}


def record_from_example(example: dict[str, Any]) -> dict[str, str]:
    """A data-source example (bytes values) as a plain {field: str} record."""
    return {k: common.decode_text(v) for k, v in example.items()}
