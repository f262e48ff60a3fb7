"""The model card (`README.md`) of every export: YAML front matter as the Hugging Face hub reads it, then the facts.

`model_card(info, kind)` renders a `CardInfo` for a `merged`, `peft` or `gguf` export:
- front matter: `base_model` (only when it is a hub id, `org/name`; a local path is named in the
  text instead), `library_name` (transformers / peft / gguf), `tags`, `license` (when the base
  folder's own README.md states one), `pipeline_tag`;
- the base model, each training data file with its sha256 (hashed at export time; a file no longer
  at its path is said to be missing), the LoRA and optimizer settings, the step exported, and eval
  results: each `results.json` found in the run folder (`RUN/*/results.json`, as
  `python -m bioinstruct_jax.eval --output RUN/eval` writes) or passed with `--eval-results`,
  named by path with its headline metric, n and the metric's other figures per task;
- how to load it, and how to tell a whole export (the folder exists only once complete).
`card_info_for_run(...)` gathers these from a restored run's config; `card_info_for_base(...)` for
an HF base + PEFT adapter export (no training facts known).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
from typing import Any, Sequence

import yaml

from bioinstruct_jax.config.run import RunConfig
from bioinstruct_jax.config.sections import LoraConfig

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
LIBRARY = {"merged": "transformers", "peft": "peft", "gguf": "gguf"}
CARD_FILE = "README.md"


@dataclasses.dataclass
class CardInfo:
    """What a model card states; None / empty where the export does not know it."""

    base_model: str
    lora: LoraConfig | None = None
    optim: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    data_files: list[tuple[str, str, str | None]] = dataclasses.field(default_factory=list)  # (key, path, sha256)
    step: int | None = None
    total_steps: int | None = None
    run_dir: str | None = None
    eval_results: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)  # (path, results)
    license: str | None = None


def sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _data_file(key: str, value: str, run_dir: str | None) -> tuple[str, str, str | None]:
    """(config key, path, sha256 or None when the file is not there now); relative paths are tried
    from the working directory, then from the run folder."""
    candidates = [pathlib.Path(value)]
    if run_dir and not pathlib.Path(value).is_absolute():
        candidates.append(pathlib.Path(run_dir) / value)
    for c in candidates:
        if c.is_file():
            return key, value, sha256_file(c)
    return key, value, None


def base_license(base: str | pathlib.Path | None) -> str | None:
    """The `license` of a base model folder's own README.md front matter, if it states one."""
    if not base:
        return None
    readme = pathlib.Path(base) / CARD_FILE
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    m = re.match(r"---\n(.*?)\n---", text, re.DOTALL)
    try:
        front = yaml.safe_load(m.group(1)) if m else None
    except yaml.YAMLError:
        return None
    value = front.get("license") if isinstance(front, dict) else None
    return str(value) if value else None


def find_eval_results(run_dir: str | None, extra: Sequence[str] = ()) -> list[tuple[str, dict[str, Any]]]:
    """(path, parsed results.json) for `RUN/*/results.json` and each path in `extra`; unreadable
    files are skipped (the card is no place to fail an export)."""
    paths = [pathlib.Path(p) for p in extra]
    if run_dir and pathlib.Path(run_dir).is_dir():
        paths += sorted(pathlib.Path(run_dir).glob("*/results.json"))
    out = []
    for p in dict.fromkeys(paths):
        try:
            results = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(results, dict) and isinstance(results.get("tasks"), dict):
            out.append((str(p), results))
    return out


def card_info_for_run(config: RunConfig, step: int, run_dir: str, eval_results: Sequence[str] = ()) -> CardInfo:
    """The card facts of a training run restored at `step`."""
    m = config.model
    base = m.hf_path or f"random weights (preset {m.preset!r}, seed {m.seed})"
    files = [_data_file(f"data.{key}", getattr(config.data, key), run_dir)
             for key in ("train_file", "val_file") if getattr(config.data, key, "")]
    data = {k: getattr(config.data, k) for k in ("template", "max_length", "batch_size", "packing", "tfds_config")
            if hasattr(config.data, k)}
    return CardInfo(base_model=base, lora=config.lora, optim=dataclasses.asdict(config.optim), data=data,
                    data_files=files, step=step, total_steps=config.train.steps or None, run_dir=run_dir,
                    eval_results=find_eval_results(run_dir, eval_results), license=base_license(m.hf_path))


def card_info_for_base(base: str, lora: LoraConfig | None, adapter: str | None,
                       eval_results: Sequence[str] = ()) -> CardInfo:
    """The card facts of an HF base (+ PEFT adapter) export: the base, the adapter's LoRA settings."""
    info = CardInfo(base_model=base, lora=lora, eval_results=find_eval_results(None, eval_results),
                    license=base_license(base))
    if adapter:
        info.data = {"adapter": str(adapter)}
    return info


def _front_matter(info: CardInfo, kind: str) -> str:
    front: dict[str, Any] = {}
    if _HUB_ID.fullmatch(info.base_model) and not pathlib.Path(info.base_model).exists():
        front["base_model"] = info.base_model
    front["library_name"] = LIBRARY[kind]
    if info.license:
        front["license"] = info.license
    tags = ["bioinstruct-jax", "llama", "lora", "biomedical", "instruction-tuning"]
    if kind == "gguf":
        tags += ["gguf", "llama.cpp"]
    if kind == "peft":
        tags.append("peft")
    front["tags"] = tags
    front["pipeline_tag"] = "text-generation"
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n"


def _table(rows: Sequence[Sequence[Any]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(map(str, head)) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in body]
    return "\n".join(lines)


def _number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _eval_section(results: list[tuple[str, dict[str, Any]]]) -> str:
    if not results:
        return ("## Evaluation\n\nNo eval results were found (none in the run folder's `*/results.json`, none "
                "passed with `--eval-results`).\n")
    parts = ["## Evaluation\n"]
    for path, res in results:
        rows: list[Sequence[Any]] = [("task", "headline metric", "value", "n", "other figures")]
        for name, entry in res.get("tasks", {}).items():
            metrics = entry.get("metrics", {}) or {}
            key = entry.get("headline", "")
            others = ", ".join(f"{k} {_number(v)}" for k, v in metrics.items()
                               if k != key and isinstance(v, (int, float)))
            rows.append((name, key, _number(metrics.get(key, "-")), entry.get("n", "-"), others or "-"))
        parts.append(f"Read from `{path}`:\n\n{_table(rows)}\n")
    return "\n".join(parts)


def _loading_section(kind: str, info: CardInfo, files: Sequence[str]) -> str:
    if kind == "merged":
        how = ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
               "model = AutoModelForCausalLM.from_pretrained(\"THIS_FOLDER\")\n"
               "tokenizer = AutoTokenizer.from_pretrained(\"THIS_FOLDER\")\n```\n")
    elif kind == "peft":
        how = ("```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n"
               f"base = AutoModelForCausalLM.from_pretrained(\"{info.base_model}\")\n"
               "model = PeftModel.from_pretrained(base, \"THIS_FOLDER\")\n```\n")
    else:
        f = files[0] if files else "model-<TYPE>.gguf"
        how = (f"llama.cpp: `llama-cli -m THIS_FOLDER/{f}`; Ollama: a Modelfile with `FROM ./{f}`; "
               f"transformers: `AutoModelForCausalLM.from_pretrained(\"THIS_FOLDER\", gguf_file=\"{f}\")`.\n")
    return (f"## How to load\n\n{how}\nThe export was written into a hidden temporary folder beside this one and "
            "renamed into place when complete: this folder exists only as a whole export. A `.NAME.tmp-PID` "
            "folder beside it is an unfinished (killed) export; never load it.\n")


def model_card(info: CardInfo, kind: str, *, files: Sequence[str] = ()) -> str:
    """README.md text of a `merged`, `peft` or `gguf` export."""
    what = {"merged": "a merged LLaMA model (LoRA folded into the base weights), Hugging Face format",
            "peft": "a PEFT LoRA adapter", "gguf": "a merged LLaMA model as a llama.cpp / Ollama GGUF file"}[kind]
    out = [_front_matter(info, kind), f"# BioInstruct LoRA fine-tune ({kind})\n",
           f"This folder holds {what}, exported by `python -m bioinstruct_jax.export`"
           + (f"{' (' + ', '.join(files) + ')' if files else ''}.\n"),
           f"## Base model\n\n`{info.base_model}`\n"]
    if info.run_dir:
        steps = f"step {info.step}" + (f" of {info.total_steps}" if info.total_steps else "")
        out.append(f"## Training\n\nRun folder `{info.run_dir}`, exported at {steps}.\n")
    if info.data_files:
        rows: list[Sequence[Any]] = [("config key", "file", "sha256")]
        rows += [(k, f"`{p}`", sha or "missing at export time (not hashed)") for k, p, sha in info.data_files]
        out.append("## Training data\n\n" + _table(rows) + "\n")
    if info.data:
        out.append("## Data settings\n\n" + _table([("setting", "value")] + [(k, v) for k, v in info.data.items()])
                   + "\n")
    if info.lora is not None:
        lora = dataclasses.asdict(info.lora)
        out.append("## LoRA\n\n" + _table([("setting", "value")] + [(k, v) for k, v in lora.items()]) + "\n")
    if info.optim:
        out.append("## Optimizer\n\nAdamW (optax):\n\n"
                   + _table([("setting", "value")] + [(k, v) for k, v in info.optim.items()]) + "\n")
    out.append(_eval_section(info.eval_results))
    out.append(_loading_section(kind, info, files))
    return "\n".join(out)


__all__ = ["CARD_FILE", "CardInfo", "card_info_for_base", "card_info_for_run", "find_eval_results", "model_card",
           "sha256_file"]
