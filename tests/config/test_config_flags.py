"""Command-line flags derived from dataclass fields (config.flags), and the data-generation CLI built on them."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from bioinstruct_jax.config import ConfigError
from bioinstruct_jax.config.flags import Flag, add_flags, flag_field, from_args
from bioinstruct_jax.data.self_instruct.cli import parse_args
from bioinstruct_jax.data.self_instruct.settings import GenerateConfig


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


@dataclasses.dataclass
class Settings:
    count: int = flag_field(3, Flag(type=_positive, help="how many"))
    name: str = flag_field("x")
    timeout_s: float = flag_field(1.5, Flag("--timeout", type=float))
    progress: bool = flag_field(True, Flag("--no-progress", action="store_false"))
    hidden: int = 7  # no flag

    def __post_init__(self) -> None:
        if self.count > 100:
            raise ValueError(f"count={self.count} is too many")


def _parse(argv):
    p = argparse.ArgumentParser()
    add_flags(p, Settings)
    return p, p.parse_args(argv)


def test_one_flag_per_field_with_its_name_default_type_and_help():
    p, args = _parse([])
    assert from_args(Settings, args) == Settings()
    assert {a.dest: a.option_strings for a in p._actions if a.dest != "help"} == {
        "count": ["--count"], "name": ["--name"], "timeout_s": ["--timeout"], "progress": ["--no-progress"]}
    assert "how many" in p.format_help()
    _, args = _parse(["--count", "5", "--name", "y", "--timeout", "2", "--no-progress"])
    assert from_args(Settings, args) == Settings(count=5, name="y", timeout_s=2.0, progress=False)


def test_values_are_checked_by_the_loader_like_a_config_file():
    _, args = _parse(["--count", "500"])
    with pytest.raises(ConfigError, match="command line: Settings: count=500 is too many"):
        from_args(Settings, args)


def test_data_generate_flags_come_from_generate_config():
    assert parse_args([]) == GenerateConfig()
    cfg = parse_args(["--label-only", "--input", "d/a.json", "--no-label", "--timeout", "3", "--seeds", "s.jsonl",
                      "--max-requests", "9"])
    assert (cfg.output, cfg.label_only, cfg.input, cfg.label_with_model, cfg.timeout_s, cfg.seeds_path,
            cfg.max_requests) == ("d/a.labels.jsonl", True, "d/a.json", False, 3.0, "s.jsonl", 9)
    flagged = {f.name for f in dataclasses.fields(GenerateConfig) if f.metadata.get("flags")}
    assert flagged == {f.name for f in dataclasses.fields(GenerateConfig)}  # every setting is on the command line
    with pytest.raises(ConfigError, match="command line: GenerateConfig: generation setting max_words=5 is out of range"):
        parse_args(["--min-words", "10", "--max-words", "5"])
