"""Export to Hugging Face: a merged `LlamaForCausalLM` directory and/or a PEFT LoRA adapter; and back.

`python -m bioinstruct_jax.export --checkpoint RUN_DIR [--step N] --out DIR --format merged|peft|both|gguf
  [--dtype float32|float16|bfloat16|q8_0]`
  (or `--base HF_DIR [--adapter PEFT_DIR]` instead of `--checkpoint`: an HF base plus an adapter
  made elsewhere, e.g. to merge it). `gguf` writes DIR/model-<TYPE>.gguf for llama.cpp / Ollama.
Every output folder gets a model card (README.md).

The command: parses the flags, runs `export.formats.export_checkpoint` / `export_base_adapter` and
prints one JSON line (the output folder, the format and the files written). Outputs are written to
a temporary sibling directory and renamed into place when complete (so an output folder is a whole
export; a killed export's leftover is removed by the next run, `checkpoint.staging`); an existing non-empty output
directory is refused unless `--overwrite`, and even then when it holds anything an export does not
write. An output that is, contains or lies inside the run / base / adapter being read is always
refused. `--format both` writes OUT/merged and OUT/peft; other entries of OUT are left alone (and named).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
from typing import Sequence

from bioinstruct_jax.cli import errors as cli_errors
from bioinstruct_jax.cli.arguments import ArgumentParser
from bioinstruct_jax.export.formats import FORMATS, export_base_adapter, export_checkpoint, format_dirs
from bioinstruct_jax.export.merged import DEFAULT_MAX_SHARD_BYTES
from bioinstruct_jax.parallel.distributed import refuse_multi_process


def parse_size(text: str) -> int:
    """'5GB' / '500MB' / '2GiB' / '1000' -> bytes."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B?)\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"cannot read size {text!r} (e.g. 5GB, 500MB, 2GiB)")
    unit = m.group(2).upper().rstrip("B")
    base = 1024 if unit.endswith("I") else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit.rstrip("I")]
    return int(float(m.group(1)) * base**power)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m bioinstruct_jax.export", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a training run's output_dir (or its checkpoints/ folder)")
    src.add_argument("--base", help="an HF LLaMA directory (with --adapter: merge a PEFT adapter into it)")
    p.add_argument("--adapter", help="a PEFT LoRA adapter directory (with --base)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--out", required=True, help="output directory (with --format both: OUT/merged and OUT/peft)")
    p.add_argument("--format", default="merged", choices=FORMATS,
                   help="merged (HF folder), peft (adapter), both (OUT/merged, OUT/peft), gguf (one llama.cpp file)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16", "q8_0"),
                   help="weights dtype of the merged model or GGUF file (default: the model's parameter dtype; "
                        "GGUF: float32); q8_0 is for gguf only")
    p.add_argument("--eval-results", action="append", default=[], metavar="RESULTS_JSON",
                   help="an eval results.json to state in the model card (repeatable; a run's own "
                        "RUN/*/results.json are found without it)")
    p.add_argument("--max-shard-size", type=parse_size, default=DEFAULT_MAX_SHARD_BYTES,
                   help="largest safetensors shard, e.g. 5GB (default), 2GiB, 500MB")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder/file to ship (default: the run's or the base's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    cli_errors.add_debug_argument(p)
    args = p.parse_args(argv)
    if args.adapter and not args.base:
        p.error("--adapter needs --base (the HF model the adapter was trained on)")
    if args.step is not None and not args.checkpoint:
        p.error("--step applies to --checkpoint only")
    return args


def _both_note(out: pathlib.Path) -> str | None:
    """What `--format both` does in a folder that already holds other entries (they are kept)."""
    others = sorted(p.name for p in out.iterdir() if p.name not in ("merged", "peft")) if out.is_dir() else []
    if not others:
        return None
    return (f"note: {out} is not empty; --format both wrote only {out / 'merged'} and {out / 'peft'} "
            f"and left its {len(others)} other entries ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) "
            f"as they are")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    refuse_multi_process("bioinstruct_jax.export")  # one process; see distributed.py
    common = dict(fmt=args.format, tokenizer=args.tokenizer, dtype=args.dtype, max_shard_bytes=args.max_shard_size,
                  overwrite=args.overwrite, eval_results=args.eval_results)
    note = _both_note(pathlib.Path(args.out)) if args.format == "both" else None
    try:
        if args.checkpoint:
            out = export_checkpoint(args.checkpoint, args.out, step=args.step, **common)
        else:
            out = export_base_adapter(args.base, args.out, adapter_dir=args.adapter, **common)
    except (ValueError, OSError) as err:  # ExportError, CheckpointError, a damaged checkpoint, a full disk
        return cli_errors.report_or_raise(err)
    if note:
        print(note, file=sys.stderr)
    written = sorted(str(p.relative_to(out)) for d in format_dirs(out, args.format).values()
                     for p in d.rglob("*") if p.is_file())
    print(json.dumps({"out": str(out), "format": args.format, "files": written}))
    return 0


if __name__ == "__main__":
    sys.exit(cli_errors.run(main))
