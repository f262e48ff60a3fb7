"""`python -m bioinstruct_jax.data.generate`: flags, the run, and the command's error policy
(one `error:` line and exit 2 for a bad input; 130 after Ctrl-C with what was saved)."""

from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Any

from bioinstruct_jax.cli import arguments as cli_types
from bioinstruct_jax.cli import errors as cli_errors
from bioinstruct_jax.config.flags import add_flags, from_args
from bioinstruct_jax.data.llm_client import LLMError
from bioinstruct_jax.data.records import RecordError
from bioinstruct_jax.data.self_instruct.run import label_only, run
from bioinstruct_jax.data.self_instruct.settings import DEFAULT_OUTPUT, GenerateConfig
from bioinstruct_jax.data.self_instruct.state import GenerationError, GenerationInterrupted


def parse_args(argv: list[str] | None = None) -> GenerateConfig:
    p = cli_types.ArgumentParser(prog="python -m bioinstruct_jax.data.generate",
                                description="Generate BioInstruct-style tasks from seeds with an OpenAI-compatible "
                                            "model and label them; or (--label-only) label an existing file.")
    add_flags(p, GenerateConfig)
    cli_errors.add_debug_argument(p)
    args = p.parse_args(argv)
    if args.input and not args.label_only:
        p.error("--input is only used with --label-only")
    if args.label_only and not args.input:
        p.error("--label-only needs --input FILE")
    if args.output is None:
        args.output = str(pathlib.Path(args.input).with_suffix(".labels.jsonl")) if args.label_only else DEFAULT_OUTPUT
    return from_args(GenerateConfig, args)


def _interrupted_line(cfg: GenerateConfig, s: dict[str, Any]) -> str:
    if cfg.label_only:
        return (f"interrupted: {s.get('labelled_so_far', 0)} of {s.get('records', 0)} tasks labelled in {cfg.output}; "
                "run the same command again to resume")
    return (f"interrupted: {s['accepted']} of {s['target']} tasks saved in {s['output']}; "
            "run the same command again to resume")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        summary = label_only(cfg) if cfg.label_only else run(cfg)
        print(json.dumps(summary, indent=2))
    except GenerationInterrupted as exc:
        print(_interrupted_line(cfg, exc.summary), file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # after the work was saved (while printing)
        print(f"interrupted; everything done is saved in {cfg.output}", file=sys.stderr)
        return 130
    except (GenerationError, LLMError, RecordError, FileNotFoundError, ValueError) as exc:
        return cli_errors.report_or_raise(exc)
    unlabelled = summary.get("unlabelled", 0)
    if unlabelled:
        what = summary["output"] if cfg.label_only else summary["labels_file"]
        print(f"{unlabelled} tasks could not be labelled (unreadable or failed label replies) and are left out "
              f"of {what}; run the same command again to ask for them again", file=sys.stderr)
    return 0 if summary["complete"] else 1


def run_command() -> None:
    """`python -m bioinstruct_jax.data.generate`: run `main` and exit with its code."""
    code = cli_errors.run(main)
    if code == cli_errors.EXIT_INTERRUPTED:  # Ctrl-C: do not wait for requests still in flight in worker threads
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
