"""Reports of the paper's two training experiments, from the runs `scripts/ablation.sh` and
`scripts/data_size_curve.sh` leave behind (each run folder: `run_config.yaml`, checkpoints, and
`eval/results.json`).

  python -m bioinstruct_jax.eval.ablation category --runs runs/ablation [--categories qa ie gen]
  python -m bioinstruct_jax.eval.ablation data-size --runs runs/data_size [--sizes 5k 10k ...] [--png FILE]
  python -m bioinstruct_jax.eval.ablation labels-needed --config FILE [key=value ...]

`category`: per training category, the epochs it trained (optimizer steps x batch / training
records) and the per-group averages (QA accuracy, IE F1, GEN GPT-4 coherence; `report.group_rows`)
beside the paper's ablation (LLaMA 2 7B, `paper_results.PAPER_ABLATION`); written to
`RUNS/ablation.json` too. `data-size`: the same group averages per data size, a PNG of score against
training records beside the paper's points (its tables give 0 and 25,005 instructions only), and
`RUNS/data_size.json`. `labels-needed`: prints the labels file the category configs need when the
run's data has no categories (`data.labels_file`, or `RUNS`-relative default given by `--default`),
nothing when the training file already carries a category on every record.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
from typing import Any, Sequence

from bioinstruct_jax.cli import errors as cli_errors
from bioinstruct_jax.cli.arguments import ArgumentParser
from bioinstruct_jax.config import load_run_config
from bioinstruct_jax.data.journal import write_json_atomic
from bioinstruct_jax.data.pipeline import load_split
from bioinstruct_jax.data.records import read_instruction_file
from bioinstruct_jax.eval import paper_results, report

GROUP_NAMES = {"qa": "QA", "ie": "IE", "gen": "GEN"}


def _results(run_dir: pathlib.Path) -> dict[str, Any]:
    path = run_dir / "eval" / "results.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def run_size(run_dir: pathlib.Path) -> dict[str, Any]:
    """{"steps", "batch_size", "train_records", "epochs", "epochs_setting"} of a finished run."""
    cfg_path = run_dir / "run_config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no run_config.yaml (did its training run?)")
    cfg = load_run_config(cfg_path)
    steps = cfg.train.steps or _steps_done(run_dir)
    n = len(load_split(cfg.data, "train"))
    return {"steps": steps, "batch_size": cfg.data.batch_size, "train_records": n,
            "epochs": steps * cfg.data.batch_size / n if n else 0.0, "epochs_setting": cfg.train.epochs}


def _steps_done(run_dir: pathlib.Path) -> int:
    """The last optimizer step of a run: its newest checkpoint folder (steps 0 = from epochs)."""
    steps = [int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit()]
    if not steps:
        raise FileNotFoundError(f"{run_dir}/checkpoints: no checkpoint step folder")
    return max(steps)


def _fmt(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def category_report(runs: pathlib.Path, categories: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """The printed table and the JSON of the category ablation."""
    data: dict[str, Any] = {"paper_model": paper_results.ABLATION_MODEL, "runs": {}}
    rows = [["trained on", "epochs", "steps", "records"]]
    for g in paper_results.GROUPS:
        rows[0] += [f"{GROUP_NAMES[g]} ours", f"{GROUP_NAMES[g]} paper"]
    for cat in categories:
        run_dir = runs / cat
        size = run_size(run_dir)
        groups = {g: {"metric": m, "ours": ours, "tasks": t}
                  for g, m, ours, _, t in report.group_rows(_results(run_dir).get("tasks", {}), None)}
        data["runs"][cat] = {**size, "groups": groups}
        row = [cat, f"{size['epochs']:.2f}", str(size["steps"]), str(size["train_records"])]
        for g in paper_results.GROUPS:
            got = groups.get(g)
            paper = paper_results.PAPER_ABLATION.get(cat, {}).get(g)
            same_metric = got is not None and got["metric"] == paper_results.GROUP_METRIC[g]
            row += [_fmt(got["ours"]) + ("" if got is None or same_metric else f" ({got['metric']})")
                    if got else "-", _fmt(paper)]
        rows.append(row)
    title = (f"Category ablation: each group's average (QA accuracy %, IE F1 %, GEN GPT-4 coherence 1-5) "
             f"beside the paper's ({paper_results.ABLATION_MODEL}); a metric in brackets is ours only "
             "(not the paper's)")
    return title + "\n" + report.grid([tuple(r) for r in rows]), data


def _size_value(name: str) -> int:
    m = re.fullmatch(r"(\d+)(k?)", name)
    if not m:
        raise ValueError(f"data size {name!r}: expected a number, optionally with k (5k)")
    return int(m.group(1)) * (1000 if m.group(2) else 1)


def data_size_report(runs: pathlib.Path, sizes: Sequence[str], png: pathlib.Path | None
                     ) -> tuple[str, dict[str, Any]]:
    """The printed table, the JSON and (when `png`) the plot of the data-size curve."""
    points: dict[str, list[tuple[int, float, str]]] = {g: [] for g in paper_results.GROUPS}
    data: dict[str, Any] = {"runs": {}, "paper_points": {g: paper_results.data_size_points(g)
                                                          for g in paper_results.GROUPS}}
    rows = [("size", "records", "epochs") + tuple(f"{GROUP_NAMES[g]}" for g in paper_results.GROUPS)]
    for name in sizes:
        run_dir = runs / name
        size = run_size(run_dir)
        groups = {g: (m, ours) for g, m, ours, _, _ in report.group_rows(_results(run_dir).get("tasks", {}), None)}
        data["runs"][name] = {**size, "groups": {g: {"metric": m, "ours": v} for g, (m, v) in groups.items()}}
        for g, (m, v) in groups.items():
            points[g].append((size["train_records"], v, m))
        rows.append((name, str(size["train_records"]), f"{size['epochs']:.2f}")
                    + tuple(f"{groups[g][1]:.2f} ({groups[g][0]})" if g in groups else "-" for g in paper_results.GROUPS))
    paper_rows = [("paper (LLaMA 2 7B)", str(n), "") + tuple(
        next((_fmt(v) for m, v in data["paper_points"][g] if m == n), "-") for g in paper_results.GROUPS)
        for n in (0, 25_005)]
    text = "Data-size curve (group averages; the paper's tables give only 0 and 25,005 instructions)\n"
    text += report.grid(rows + paper_rows)
    if png is not None:
        plot_data_size(points, data["paper_points"], png)
        data["png"] = str(png)
        text += f"\nplot: {png}"
    return text, data


def plot_data_size(points: dict[str, list[tuple[int, float, str]]], paper: dict[str, list[tuple[int, float]]],
                   png: pathlib.Path) -> None:
    """One panel per group: our score against training records, the paper's points beside it."""
    import matplotlib  # costly; only the data-size report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(points), figsize=(4.2 * len(points), 3.6))
    for ax, (g, pts) in zip(axes, points.items()):
        pts = sorted(pts)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"ours ({pts[0][2]})")
        if paper.get(g) and (not pts or pts[0][2] == paper_results.GROUP_METRIC[g]):
            ax.plot([p[0] for p in paper[g]], [p[1] for p in paper[g]], "s--", color="gray",
                    label="paper, LLaMA 2 7B (tables)")
        ax.set_title(f"{GROUP_NAMES[g]}: {paper_results.GROUP_METRIC[g] if not pts else pts[0][2]}")
        ax.set_xlabel("training instructions")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def labels_needed(config: str | None, overrides: Sequence[str], default: str) -> str | None:
    """The labels file to create for category configs, or None when none is needed."""
    cfg = load_run_config(config, overrides)
    if cfg.data.labels_file:
        return None if pathlib.Path(cfg.data.labels_file).exists() else cfg.data.labels_file
    records, _ = read_instruction_file(cfg.data.train_file, skip_malformed=cfg.data.skip_malformed)
    return None if records and all(r.category for r in records) else default


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m bioinstruct_jax.eval.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("category", help="category ablation table beside the paper's")
    c.add_argument("--runs", required=True, type=pathlib.Path)
    c.add_argument("--categories", nargs="+", default=["qa", "ie", "gen"])
    d = sub.add_parser("data-size", help="data-size curve table and PNG")
    d.add_argument("--runs", required=True, type=pathlib.Path)
    d.add_argument("--sizes", nargs="+", default=["5k", "10k", "15k", "20k", "25k"])
    d.add_argument("--png", type=pathlib.Path, help="default: RUNS/data_size.png")
    lab = sub.add_parser("labels-needed", help="print the labels file the category configs need, if any")
    lab.add_argument("--config")
    lab.add_argument("--default", required=True, help="path to print when data.labels_file is unset")
    lab.add_argument("overrides", nargs="*")
    cli_errors.add_debug_argument(p)
    return _run(p.parse_args(argv))  # a missing run / bad record: one `error:` line through cli_errors.run


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "labels-needed":
        need = labels_needed(args.config, args.overrides, args.default)
        if need:
            print(need)
        return 0
    if args.cmd == "category":
        text, data = category_report(args.runs, args.categories)
        out = args.runs / "ablation.json"
    else:
        for s in args.sizes:
            _size_value(s)
        text, data = data_size_report(args.runs, args.sizes, args.png or args.runs / "data_size.png")
        out = args.runs / "data_size.json"
    write_json_atomic(out, data, indent=1, sort_keys=False)
    print(text)
    print(f"\n{out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli_errors.run(main))
