"""LoRA instruction tuning: `python -m bioinstruct_jax.train --config configs/FILE.yaml [key=value ...]`.

The command: reads the run config (file + key=value overrides), starts the multi-process runtime
when the environment asks for it, runs `train.loop.run` and prints one JSON line (step, losses,
where the checkpoints, metrics and loss curve are). Config, checkpoint, data and file-system errors
are one-line messages (`cli.errors`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import jax

from bioinstruct_jax.cli import errors as cli_errors
from bioinstruct_jax.cli.arguments import ArgumentParser
from bioinstruct_jax.config import dump_yaml, load_run_config
from bioinstruct_jax.parallel.distributed import maybe_initialize_distributed
from bioinstruct_jax.train.loop import run


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m bioinstruct_jax.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="run config YAML (default: configs/tiny.yaml values built in)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1.0e-4 train.steps=500")
    p.add_argument("--out", help="the run folder (the same as the override train.output_dir=OUT, which it follows)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--step", type=int, default=None,
                   help="resume from this checkpoint step (default: the newest intact one); newer steps are "
                        "moved aside, not deleted")
    cli_errors.add_debug_argument(p)
    return p.parse_args(argv)


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The key=value overrides the command line gives (`--out` as train.output_dir, written as JSON)."""
    return [*args.overrides, *([f"train.output_dir={json.dumps(args.out)}"] if args.out else [])]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_run_config(args.config, config_overrides(args))
        if args.print_config:
            print(dump_yaml(cfg))
            return 0
        maybe_initialize_distributed()
        result = run(cfg, resume_step=args.step)
    except (ValueError, OSError) as err:  # config, checkpoint, data and file-system errors
        return cli_errors.report_or_raise(err)
    if jax.process_index() == 0:
        print(json.dumps({"step": result.step, "preempted": result.preempted, "final_loss": result.final_loss,
                          "val_loss": result.val_loss, "checkpoints": result.checkpoint_dir,
                          "metrics": result.metrics_path, "loss_curve": result.loss_curve}))
    return 0


if __name__ == "__main__":
    sys.exit(cli_errors.run(main))
