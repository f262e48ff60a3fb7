"""`python -m bioinstruct_jax.generate`: print generations of an HF model, a GGUF file or a training run.

Raw `--prompt` text, a question in the model's chat template (`--chat`), or an instruction in a
named template (`--template`, by default the one a training run was trained with); `--adapter` (earlier `--lora`) adds a
PEFT adapter or a training run's LoRA weights to `--model`. The predictor is
`infer.predictor.load_predictor`; one line per prompt, or one JSON object per prompt with `--jsonl`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

from bioinstruct_jax.cli import arguments as cli_types
from bioinstruct_jax.cli import errors as cli_errors
from bioinstruct_jax.cli.arguments import non_negative_float, non_negative_int, positive_int, unit_interval
from bioinstruct_jax.data import templates
from bioinstruct_jax.data.records import read_utf8
from bioinstruct_jax.infer.predictor import load_predictor
from bioinstruct_jax.parallel.distributed import refuse_multi_process


def build_parser() -> argparse.ArgumentParser:
    p = cli_types.ArgumentParser(prog="python -m bioinstruct_jax.generate",
                                description="Generate text from an HF LLaMA directory or a training run.")
    p.add_argument("--model", required=True,
                   help="HF checkpoint directory, GGUF file (or a folder holding one), or training run directory")
    p.add_argument("--adapter", dest="lora", help="PEFT adapter directory or training run directory with LoRA weights for --model")
    p.add_argument("--tokenizer", help="tokenizer path (default: the model / run's own)")
    p.add_argument("--prompt", action="append", default=[],
                   help=r"prompt text (repeatable); \n, \t and \\ are read as newline, tab, backslash unless "
                   "--no-escape. Sent as is, or as the instruction of --template")
    p.add_argument("--chat", action="append", default=[], metavar="QUESTION",
                   help="a user question in the model's own chat template (repeatable)")
    p.add_argument("--template", help="format each --prompt as an instruction in this template (alpaca, "
                   "bioinstruct_paper, chat) or 'raw' (as is); default: the training run's template, else raw")
    p.add_argument("--no-escape", action="store_true", help="keep backslashes in --prompt text literally")
    p.add_argument("--prompt-file", help="one prompt per line, or a .jsonl file with a 'prompt' field")
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=non_negative_int, default=0)
    p.add_argument("--top-p", type=unit_interval, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--dtype", help="float32 / bfloat16 (default: float32 on CPU, bfloat16 elsewhere)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--mesh", help="data,fsdp,tensor sizes, e.g. 1,4,2 (default: one device)")
    p.add_argument("--no-merge-lora", action="store_true", help="keep LoRA adapters unmerged")
    p.add_argument("--jsonl", action="store_true", help="print one JSON object per prompt")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of a training run (default: the latest)")
    cli_errors.add_debug_argument(p)
    p.add_alias("--lora", "--adapter")  # the earlier name, still accepted
    return p


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    r"""`\n`, `\t`, `\\` in command-line text as newline, tab, backslash (llama.cpp's --escape)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPES:
            out.append(_ESCAPES[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = [p if args.no_escape else unescape(p) for p in args.prompt]
    if args.prompt_file:
        f = pathlib.Path(args.prompt_file)
        for n, line in enumerate(read_utf8(f).splitlines(), 1):
            if not line.strip():
                continue
            if f.suffix == ".jsonl":
                try:
                    prompts.append(json.loads(line)["prompt"])
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise ValueError(f"{f}:{n}: expected a JSON object with a 'prompt' field ({err})") from None
            else:
                prompts.append(line.replace("\\n", "\n"))
    return prompts


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    refuse_multi_process("bioinstruct_jax.generate")  # one process; see distributed.py
    prompts = _read_prompts(args)
    if not prompts and not args.chat:
        raise ValueError("no prompts: pass --prompt TEXT, --chat QUESTION or --prompt-file FILE")
    if args.template is not None and args.template != "raw" and args.template not in templates.TEMPLATE_NAMES:
        raise ValueError(f"--template {args.template!r}: known templates are raw, "
                         + ", ".join(templates.TEMPLATE_NAMES))
    predictor = load_predictor(args.model, args.lora, dtype=args.dtype, mesh=args.mesh, batch_size=args.batch_size,
                               tokenizer=args.tokenizer, temperature=args.temperature, top_k=args.top_k,
                               top_p=args.top_p, seed=args.seed, merge_lora=not args.no_merge_lora,
                               template=args.template, step=args.step)
    texts = [templates.render_prompt(predictor.template, p, tokenizer=predictor.tokenizer)
             if predictor.template != "raw" else p for p in prompts]
    texts += [templates.render_prompt("chat", q, tokenizer=predictor.tokenizer) for q in args.chat]
    prompts = prompts + list(args.chat)
    outputs = predictor.generate(texts, max_new_tokens=args.max_new_tokens, stop=args.stop or None)
    for i, (prompt, text) in enumerate(zip(prompts, outputs)):
        if args.jsonl:
            print(json.dumps({"prompt": prompt, "generation": text}, ensure_ascii=False))
        else:
            print(f"=== [{i}] {prompt}\n{text}\n")
    note = predictor.cut_note()
    if note:
        print(note, file=sys.stderr)
    return 0
