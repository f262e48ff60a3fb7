"""Every YAML under configs/ resolves (bases merged, through the typed loader) to exactly the config it
resolved to before the files were split into bases and overlays: tests/fixtures/resolved_configs.json."""

from __future__ import annotations

import json
import pathlib

import pytest

from bioinstruct_jax.config import load_run_config, to_dict

REPO = pathlib.Path(__file__).resolve().parents[2]
SNAPSHOT = json.loads((REPO / "tests" / "fixtures" / "resolved_configs.json").read_text())
# bases (configs/**/base/) are not runs on their own; every other file is
RUN_CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml")
                     if "base" not in p.relative_to(REPO).parts)


def test_every_run_config_has_a_snapshot_and_every_snapshot_a_file():
    assert RUN_CONFIGS == sorted(SNAPSHOT)


@pytest.mark.parametrize("name", sorted(SNAPSHOT))
def test_resolved_config_is_unchanged(name):
    resolved = json.loads(json.dumps(to_dict(load_run_config(REPO / name))))  # tuples as lists, as stored
    assert resolved == SNAPSHOT[name]
