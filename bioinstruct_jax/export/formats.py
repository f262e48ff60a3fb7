"""What the export command exports: a training run's checkpoint, or an HF base with a PEFT adapter.

- `export_checkpoint`: restores the run (`checkpoint.restore.restore_run`, at `step` or the newest)
  and exports it; the run's tokenizer and parameter dtype are the defaults.
- `export_base_adapter`: an HF base folder / GGUF file (+ a PEFT adapter read by
  `checkpoint.peft.load_peft_adapter`), e.g. to merge an adapter made elsewhere.
- `export_model`: `--format merged` (`export.merged.export_merged`), `peft`
  (`checkpoint.peft.write_peft_adapter`), `both` (OUT/merged and OUT/peft) or `gguf`
  (`export.gguf_export.export_gguf`: one llama.cpp file); every output folder is checked before
  anything is written or restored, and each gets a model card (`export.model_card`).
The command line is `export/__main__.py`.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import numpy as np

from bioinstruct_jax.checkpoint import gguf, orbax
from bioinstruct_jax.checkpoint.hf import load_pretrained
from bioinstruct_jax.checkpoint.integrity import step_dirs
from bioinstruct_jax.checkpoint.output import ExportError, check_not_overlapping, check_out_dir
from bioinstruct_jax.checkpoint.peft import load_peft_adapter, write_peft_adapter
from bioinstruct_jax.checkpoint.restore import restore_run
from bioinstruct_jax.config.storage import as_path
from bioinstruct_jax.export.gguf_export import GGUF_DTYPES, export_gguf, gguf_file_name
from bioinstruct_jax.export.merged import DEFAULT_MAX_SHARD_BYTES, export_merged
from bioinstruct_jax.export.model_card import CARD_FILE, CardInfo, card_info_for_base, card_info_for_run, model_card
from bioinstruct_jax.model.config import dtype_from_name
from bioinstruct_jax.model.decoder import Llama
from bioinstruct_jax.config.sections import LoraConfig
from bioinstruct_jax.model.lora import lora_modules


FORMATS = ("merged", "peft", "both", "gguf")


def _checkpoint_lora_check(checkpoint_dir: str, step: int | None) -> None:
    """A clear error for a directory with no training checkpoint, or one without LoRA state."""
    d = orbax.checkpoint_dir(checkpoint_dir)  # local or gs://
    steps = sorted(step_dirs(d))
    if not steps:
        hint = " (it looks like an HF model: use --base)" if (as_path(checkpoint_dir) / "config.json").is_file() else ""
        raise ExportError(f"{checkpoint_dir}: no training checkpoint found in {d}{hint}")
    chosen = steps[-1] if step is None else step
    if chosen not in steps:
        raise ExportError(f"{d}: no checkpoint for step {chosen} (have {steps})")
    items = sorted(p.name for p in (d / str(chosen)).iterdir())
    if "lora" not in items:
        raise ExportError(f"{d / str(chosen)}: holds no LoRA state (items: {items}); nothing to export as an adapter")


def _base_name(run_config: Any) -> str:
    m = run_config.model
    return m.hf_path or f"preset:{m.preset}:seed{m.seed}"


def _gguf_dtype(dtype: Any) -> str:
    """A GGUF export's --dtype name from a name or dtype (default float32)."""
    if dtype is None:
        return "float32"
    if isinstance(dtype, str) and dtype.lower() in GGUF_DTYPES:
        return dtype.lower()
    return np.dtype(dtype_from_name(dtype)).name


def export_model(model: Llama, lora_config: LoraConfig | None, out_dir: str | pathlib.Path, *,
                 fmt: str = "merged", tokenizer: Any = None, dtype: Any = None,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, base_model_name_or_path: str = "",
                 overwrite: bool = False, card: CardInfo | None = None) -> pathlib.Path:
    """`export_merged`, `write_peft_adapter` and/or `export_gguf` by `fmt` (both: OUT/merged and
    OUT/peft); returns out_dir. Each output gets the model card of `card` (default: the base only).

    Every output directory is checked before anything is written."""
    out = pathlib.Path(out_dir)
    targets = format_dirs(out, fmt)
    for path in targets.values():
        check_out_dir(path, overwrite)
    if "peft" in targets and (lora_config is None or not lora_modules(model)):
        raise ExportError("--format peft needs LoRA state, and this model has no LoRA adapters "
                          "(a base model alone has none: pass --adapter, or a training checkpoint)")
    if dtype == "q8_0" and "gguf" not in targets:
        raise ExportError("--dtype q8_0 is for --format gguf; a merged export takes float32, bfloat16 or float16")
    card = card or CardInfo(base_model=base_model_name_or_path or "unknown", lora=lora_config)

    def readme(kind: str, files: Sequence[str] = ()) -> dict[str, str]:
        return {CARD_FILE: model_card(card, kind, files=files)}

    if "merged" in targets:
        export_merged(model, targets["merged"], tokenizer_dir=tokenizer, dtype=dtype,
                      max_shard_bytes=max_shard_bytes, overwrite=overwrite, extra_files=readme("merged"))
    if "peft" in targets:
        write_peft_adapter(model, lora_config, targets["peft"], base_model_name_or_path=base_model_name_or_path,
                           overwrite=overwrite, extra_files=readme("peft"))
    if "gguf" in targets:
        name = pathlib.Path(base_model_name_or_path).name or "bioinstruct-jax"
        gguf_dtype = _gguf_dtype(dtype)
        export_gguf(model, targets["gguf"], tokenizer=tokenizer, dtype=gguf_dtype,
                    name=f"{name} (bioinstruct-jax LoRA merged)", overwrite=overwrite,
                    extra_files=readme("gguf", [gguf_file_name(gguf_dtype)]))
    return out


def export_checkpoint(checkpoint_dir: str, out_dir: str, *, step: int | None = None, fmt: str = "merged",
                      tokenizer: Any = None, dtype: Any = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                      overwrite: bool = False, eval_results: Sequence[str] = ()) -> pathlib.Path:
    """Export a training run's checkpoint (latest step by default); returns out_dir.

    tokenizer: default the run's (model.tokenizer or model.hf_path); dtype: default the run's
    model.param_dtype (a GGUF export: float32 unless asked). The model card reads the run's config,
    data files and eval results (`RUN/*/results.json` and `eval_results`)."""
    check_not_overlapping(out_dir, {"training run": orbax.run_root(checkpoint_dir)})
    for path in format_dirs(pathlib.Path(out_dir), fmt).values():
        check_out_dir(path, overwrite)  # before the restore
    _checkpoint_lora_check(checkpoint_dir, step)
    run = restore_run(checkpoint_dir, step)
    card = card_info_for_run(run.config, run.step, str(orbax.run_root(checkpoint_dir)), eval_results)
    if fmt != "gguf":
        dtype = dtype or run.config.model.param_dtype
    return export_model(run.model, run.lora, out_dir, fmt=fmt, tokenizer=tokenizer or run.tokenizer,
                        dtype=dtype, max_shard_bytes=max_shard_bytes,
                        base_model_name_or_path=_base_name(run.config), overwrite=overwrite, card=card)


def format_dirs(out: pathlib.Path, fmt: str) -> dict[str, pathlib.Path]:
    """Output folder per format: OUT itself, or OUT/merged and OUT/peft for `both`."""
    if fmt == "both":
        return {"merged": out / "merged", "peft": out / "peft"}
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose {', '.join(FORMATS)}")
    return {fmt: out}


def export_base_adapter(base_dir: str | pathlib.Path, out_dir: str | pathlib.Path, *,
                        adapter_dir: str | pathlib.Path | None = None, fmt: str = "merged", tokenizer: Any = None,
                        dtype: Any = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                        overwrite: bool = False, eval_results: Sequence[str] = ()) -> pathlib.Path:
    """An HF base (+ a PEFT adapter) exported as a merged model, (re-written) adapter or GGUF file.

    The base is loaded in its stored dtype (config.json), which is also the default output dtype;
    the tokenizer defaults to the base directory's."""
    base = pathlib.Path(base_dir)
    check_not_overlapping(out_dir, {"base model": base, "PEFT adapter": adapter_dir})
    for path in format_dirs(pathlib.Path(out_dir), fmt).values():
        check_out_dir(path, overwrite)  # before the (possibly long) load
    hf_cfg = json.loads((base / "config.json").read_text()) if (base / "config.json").is_file() else {}
    stored = hf_cfg.get("dtype") or hf_cfg.get("torch_dtype") or "float32"
    model, _ = load_pretrained(base, dtype=stored)
    lora_config = load_peft_adapter(model, adapter_dir) if adapter_dir else None
    if tokenizer is None and gguf.is_gguf(base):
        tokenizer = gguf.find_gguf(base)  # the tokenizer (and chat template) in the GGUF metadata
    elif tokenizer is None and any((base / f).is_file() for f in ("tokenizer.model", "tokenizer.json")):
        tokenizer = base
    card = card_info_for_base(str(base_dir), lora_config, adapter_dir and str(adapter_dir), eval_results)
    return export_model(model, lora_config, out_dir, fmt=fmt, tokenizer=tokenizer,
                        dtype=dtype or (None if fmt == "gguf" else stored), max_shard_bytes=max_shard_bytes,
                        base_model_name_or_path=str(base.resolve()), overwrite=overwrite, card=card)
