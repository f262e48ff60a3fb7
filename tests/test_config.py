"""YAML + key=value config loading: types, nesting, and errors that name the key and file."""

from __future__ import annotations

import dataclasses

import pytest

from bioinstruct_jax.config import ConfigError, dump_yaml, load_config, load_yaml


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
