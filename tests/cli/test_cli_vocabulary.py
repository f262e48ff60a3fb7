"""One flag name per concept across the commands (`--out`, `--adapter`, `--batch-size`,
`--max-length`, `--teacher-model`); the names the commands used before stay accepted, parse to the
same settings, and are not listed in --help."""

from __future__ import annotations

import pytest

from bioinstruct_jax.cli.arguments import ArgumentParser
from bioinstruct_jax.config import load_run_config
from bioinstruct_jax.data.self_instruct import cli as generate_data_cli
from bioinstruct_jax.eval import __main__ as eval_cli
from bioinstruct_jax.infer import cli as generate_cli
from bioinstruct_jax.train import __main__ as train_cli
from bioinstruct_jax.train import plan as plan_cli


def _help_lists(parser, new: list[str], old: list[str]) -> None:
    text = parser.format_help()
    for name in new:
        assert name in text, name
    for name in old:
        assert f"{name} " not in text and f"{name}\n" not in text and f"{name}," not in text, (name, text)


def test_eval_out_and_adapter_with_their_earlier_names():
    parse = eval_cli.build_parser().parse_args
    new = parse(["--model", "m", "--adapter", "runs/a", "--out", "ev"])
    assert (new.lora, new.output) == ("runs/a", "ev")
    assert parse(["--model", "m", "--lora", "runs/a", "--output", "ev"]) == new
    assert parse(["--model", "m", "--lora=runs/a", "--output=ev"]) == new
    _help_lists(eval_cli.build_parser(), ["--out", "--adapter"], ["--output", "--lora"])


def test_generate_adapter_with_its_earlier_name():
    parse = generate_cli.build_parser().parse_args
    new = parse(["--model", "m", "--adapter", "runs/a", "--prompt", "hi"])
    assert new.lora == "runs/a"
    assert parse(["--model", "m", "--lora", "runs/a", "--prompt", "hi"]) == new
    _help_lists(generate_cli.build_parser(), ["--adapter"], ["--lora"])


def test_plan_batch_size_and_max_length_with_their_earlier_names(capsys):
    base = ["--preset", "tiny", "--mesh", "1,1,1", "--devices", "1"]
    new, new_args = plan_cli.parse_args([*base, "--batch-size", "4", "--max-length", "96"])
    old, old_args = plan_cli.parse_args([*base, "--batch", "4", "--seq", "96"])
    assert old == new and old_args == new_args
    assert (new_args.batch, new_args.seq) == (4, 96)
    default, _ = plan_cli.parse_args(base)
    assert (new.batch, new.seq) == (4, 96) and default != new  # the flags reach the plan's settings
    with pytest.raises(SystemExit):
        plan_cli.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--batch-size" in text and "--max-length" in text and "--batch " not in text and "--seq" not in text


def test_data_generate_out_and_teacher_model_with_their_earlier_names(capsys):
    new = generate_data_cli.parse_args(["--teacher-model", "gpt-4o", "--out", "tasks.jsonl"])
    assert (new.model, new.output) == ("gpt-4o", "tasks.jsonl")
    assert generate_data_cli.parse_args(["--model", "gpt-4o", "--output", "tasks.jsonl"]) == new
    with pytest.raises(SystemExit):
        generate_data_cli.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--teacher-model" in text and "--out " in text and "--model" not in text and "--output" not in text


def test_an_alias_rewrites_options_only():
    p = ArgumentParser(prog="x")
    p.add_argument("--out")
    p.add_argument("--prompt")
    p.add_argument("rest", nargs="*")
    p.add_alias("--output", "--out")
    args = p.parse_args(["--prompt=--output", "--output", "o", "--", "--output"])
    assert (args.out, args.prompt, args.rest) == ("o", "--output", ["--output"])
    with pytest.raises(ValueError, match="--nothing"):
        p.add_alias("--old", "--nothing")


def test_train_out_is_train_output_dir(tmp_path):
    out = str(tmp_path / "runs: a #1")  # YAML-special characters stay part of the path
    new = load_run_config(None, train_cli.config_overrides(train_cli.parse_args(["--out", out, "train.steps=3"])))
    assert new.train.output_dir == out and new.train.steps == 3
    old = load_run_config(None, train_cli.config_overrides(train_cli.parse_args([f"train.output_dir={tmp_path}"])))
    assert old.train.output_dir == str(tmp_path)
