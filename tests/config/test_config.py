"""YAML + key=value config loading: types, nesting, `extends:` base files, and errors that name the key and file."""

from __future__ import annotations

import ast
import dataclasses
import pathlib

import pytest

import bioinstruct_jax.config as config_pkg
from bioinstruct_jax.config import (ConfigError, config_files, dump_yaml, load_config, load_run_config, load_yaml,
                                    resolve_yaml)
from bioinstruct_jax.config.sections import CHAT_TEMPLATE, TEMPLATE_NAMES
from bioinstruct_jax.data import templates


@dataclasses.dataclass(frozen=True)
class Inner:
    r: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    mode: str | None = None


@dataclasses.dataclass
class Outer:
    name: str = "run"
    steps: int = 10
    use_remat: bool = False
    inner: Inner = dataclasses.field(default_factory=Inner)


def _write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_yaml_then_overrides_build_typed_nested_config(tmp_path):
    path = _write(tmp_path, "name: tiny\ninner:\n  r: 4\n  targets: [q_proj, k_proj]\n")
    cfg = load_config(Outer, path, ["steps=25", "inner.alpha=8", "inner.targets=v_proj,o_proj", "use_remat=true"])
    assert cfg == Outer(name="tiny", steps=25, use_remat=True,
                        inner=Inner(r=4, alpha=8.0, targets=("v_proj", "o_proj")))
    assert isinstance(cfg.inner.alpha, float)
    assert load_config(Outer, None, ["inner.alpha=1e-3"]).inner.alpha == 1e-3  # YAML reads 1e-3 as str
    again = load_config(Outer, _write(tmp_path, dump_yaml(cfg)))
    assert again == cfg


def test_unknown_key_in_file_names_key_file_and_suggestion(tmp_path):
    path = _write(tmp_path, "inner:\n  alpah: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    message = str(err.value)
    assert "inner.alpah" in message and str(path) in message and "'alpha'" in message


def test_unknown_override_key_names_command_line():
    with pytest.raises(ConfigError, match=r"command-line override 'stpes=3'.*unknown key 'stpes'.*'steps'"):
        load_config(Outer, None, ["stpes=3"])


@pytest.mark.parametrize("override, needle", [
    ("steps=ten", "steps = 'ten'; expected an integer"),
    ("steps=1.5", "steps = 1.5; expected an integer"),
    ("use_remat=3", "use_remat = 3; expected true or false"),
    ("inner.r=[1]", "inner.r = [1]; expected an integer"),
    ("name=[a]", "name = ['a']; expected a string"),
])
def test_wrong_types_are_errors_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(Outer, None, [override])
    assert needle in str(err.value)


def test_malformed_inputs(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(_write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(Outer, None, ["steps"])
    with pytest.raises(ConfigError, match="'steps' is a value, not a section"):
        load_config(Outer, None, ["steps.x=1"])


# ----------------------------------------------------------------------------------------------
# extends: base files


def _files(tmp_path, **files):
    for name, text in files.items():
        path = tmp_path / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_extends_deep_merges_bases_relative_to_the_including_file(tmp_path):
    _files(tmp_path,
           base__common="steps: 5\ninner:\n  r: 4\n  targets: [q_proj, k_proj]\n",
           base__wide="extends: common\ninner:\n  alpha: 2\n",
           run="extends: [base/wide]\nname: overlay\ninner:\n  targets: [o_proj]\n")
    cfg = load_config(Outer, tmp_path / "run")
    assert cfg == Outer(name="overlay", steps=5, inner=Inner(r=4, alpha=2.0, targets=("o_proj",)))  # lists replace
    assert config_files(tmp_path / "run") == [tmp_path / "base/common", tmp_path / "base/wide", tmp_path / "run"]
    assert "extends" not in resolve_yaml(tmp_path / "run").data
    assert load_config(Outer, tmp_path / "run", ["inner.r=16"]).inner.r == 16  # overrides win over bases


def test_a_list_of_bases_merges_in_order(tmp_path):
    _files(tmp_path, a="steps: 1\nname: a\n", b="steps: 2\n", run="extends: [a, b]\n")
    assert load_config(Outer, tmp_path / "run") == Outer(name="a", steps=2)


def test_missing_base_and_cycles_name_the_files(tmp_path):
    _files(tmp_path, run="extends: nope.yaml\n", x="extends: y\n", y="extends: [x]\n", bad="extends: 3\n")
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'run'}: extends 'nope.yaml', but {tmp_path / 'nope.yaml'} does not exist"):
        load_config(Outer, tmp_path / "run")
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'y'}: extends cycle {tmp_path / 'x'} -> {tmp_path / 'y'} -> {tmp_path / 'x'}"):
        load_config(Outer, tmp_path / "x")
    with pytest.raises(ConfigError, match="extends must be a file name or a list of file names"):
        load_config(Outer, tmp_path / "bad")


def test_errors_in_a_base_name_the_base_file(tmp_path):
    _files(tmp_path, base="inner:\n  alpah: 3\n", run="extends: base\nname: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, tmp_path / "run")
    assert f"{tmp_path / 'base'} (extended by {tmp_path / 'run'}): unknown key 'inner.alpah'" in str(err.value)
    assert "'alpha'" in str(err.value)
    _files(tmp_path, base="steps: ten\n")
    with pytest.raises(ConfigError, match=r"base \(extended by .*run\): steps = 'ten'; expected an integer"):
        load_config(Outer, tmp_path / "run")
    # overridden on the command line, the base's bad value is gone; a bad override names the command line
    assert load_config(Outer, tmp_path / "run", ["steps=3"]).steps == 3
    with pytest.raises(ConfigError, match=r"run \+ command line: steps = 'x'; expected an integer"):
        load_config(Outer, tmp_path / "run", ["steps=x"])
    # a section's own check (RunConfig's lora) names the base file that set the section's keys
    _files(tmp_path, base="lora: {r: 0}\n", run="extends: base\ntrain: {steps: 3}\n")
    with pytest.raises(ConfigError, match=r"base \(extended by .*run\): lora: lora.r must be >= 1, got 0"):
        load_run_config(tmp_path / "run")


def test_run_config_template_names_are_the_rendered_templates():
    assert (*templates.TEMPLATES, CHAT_TEMPLATE) == TEMPLATE_NAMES == templates.TEMPLATE_NAMES


def test_config_imports_nothing_else_of_the_project():
    for path in pathlib.Path(config_pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith("bioinstruct_jax") or name.startswith("bioinstruct_jax.config"), (path, name)
