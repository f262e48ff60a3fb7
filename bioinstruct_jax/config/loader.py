"""The generic typed loader: YAML files (with `extends:` base files) plus `key=value` overrides.

`load_config(RunConfig, "configs/tiny.yaml", ["optim.lr=3e-4", "lora.targets=[q_proj,v_proj]"])`
reads the YAML, applies the overrides (dotted keys, values parsed as YAML scalars/lists), and
builds the nested dataclasses, checking every value against its annotation. An unknown key or a
value of the wrong type is a `ConfigError` that names the key, where it came from (file or
command line) and, for a typo, the closest valid keys.

A file may start from base files: `extends: base.yaml` (or a list, merged in order), each path
relative to the including file. Bases are resolved recursively and deep-merged under the file's
own keys (mappings merge key by key; any other value, lists included, replaces the base's). A
missing base or a cycle is a `ConfigError` naming the including file; an error in a key that a
base file set names that base file. This module imports nothing else of the project.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import pathlib
import types
import typing
from typing import Any, Mapping, Sequence, TypeVar, Union

import yaml

T = TypeVar("T")

EXTENDS_KEY = "extends"


class ConfigError(ValueError):
    """A configuration that cannot be used as written."""


def load_yaml(path: str | pathlib.Path) -> dict[str, Any]:
    """The YAML mapping of one file as written (an empty file is an empty mapping; `extends` kept)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


@dataclasses.dataclass
class ResolvedYaml:
    """A file merged over its bases: the data, which file set each dotted key, and the files in merge order."""

    data: dict[str, Any]
    sources: dict[str, str]
    files: list[pathlib.Path]


def resolve_yaml(path: str | pathlib.Path) -> ResolvedYaml:
    """The mapping of `path` with its `extends:` bases merged in (recursively), `extends` removed."""
    return _resolve(pathlib.Path(path), ())


def config_files(path: str | pathlib.Path) -> list[pathlib.Path]:
    """`path` and every base file it extends, bases first (the order they are merged in)."""
    return resolve_yaml(path).files


def _resolve(path: pathlib.Path, chain: tuple[pathlib.Path, ...]) -> ResolvedYaml:
    raw = load_yaml(path)
    bases = raw.pop(EXTENDS_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: {EXTENDS_KEY} must be a file name or a list of file names, got {bases!r}")
    chain = (*chain, path)
    merged = ResolvedYaml({}, {}, [])
    for base in bases:
        base_path = pathlib.Path(os.path.normpath(path.parent / base))
        if not base_path.is_file():
            raise ConfigError(f"{path}: {EXTENDS_KEY} {base!r}, but {base_path} does not exist")
        if any(base_path.resolve() == p.resolve() for p in chain):
            cycle = " -> ".join(str(p) for p in (*chain, base_path))
            raise ConfigError(f"{path}: {EXTENDS_KEY} cycle {cycle}")
        resolved = _resolve(base_path, chain)
        _merge(merged.data, resolved.data, resolved.sources, merged.sources, "")
        merged.files += [f for f in resolved.files if f not in merged.files]
    _merge(merged.data, raw, _key_paths(raw, str(path)), merged.sources, "")
    merged.files.append(path)
    return merged


def _key_paths(data: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, str]:
    """{dotted key: source} for every section and value in `data`."""
    out: dict[str, str] = {}
    for key, value in data.items():
        out[prefix + str(key)] = source
        if isinstance(value, dict):
            out.update(_key_paths(value, source, f"{prefix}{key}."))
    return out


def _merge(dst: dict[str, Any], src: Mapping[str, Any], src_sources: Mapping[str, str],
           dst_sources: dict[str, str], prefix: str) -> None:
    """Deep-merge `src` into `dst` (mappings key by key, anything else replaced), keeping sources."""
    for key, value in src.items():
        path = prefix + str(key)
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            dst_sources[path] = src_sources.get(path, dst_sources.get(path, ""))
            _merge(dst[key], value, src_sources, dst_sources, path + ".")
            continue
        for stale in [k for k in dst_sources if k.startswith(path + ".")]:
            del dst_sources[stale]
        dst[key] = _deep_copy(value)
        dst_sources.update({k: v for k, v in src_sources.items() if k == path or k.startswith(path + ".")})


class _Origin:
    """Where a config came from, per key: the top file (and command line), or the base file that set it."""

    def __init__(self, label: str, top: str, sources: Mapping[str, str]):
        self.label, self.top, self.sources = label, top, sources

    def at(self, key: str) -> str:
        source = self.sources.get(key.split("[")[0])
        if not source or source == self.top:
            return self.label
        return f"{source} (extended by {self.top})"

    def __str__(self) -> str:
        return self.label


def _where(origin: str | _Origin, key: str) -> str:
    return origin.at(key) if isinstance(origin, _Origin) else origin


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `a.b.c=value` applied (value parsed as YAML)."""
    result = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"command-line override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"command-line override {item!r}: value is not valid YAML ({err})") from None
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"command-line override {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def from_dict(cls: type[T], data: dict[str, Any], origin: str | _Origin = "config", prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, type-checking every field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(origin, prefix.rstrip('.'))}: {prefix or 'top level'} must be a mapping, "
                          f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f"; valid keys: {', '.join(fields)}"
        raise ConfigError(f"{_where(origin, prefix + str(key))}: unknown key {prefix + key!r}{hint}")
    kwargs = {name: _convert(hints[name], data[name], origin, prefix + name) for name in fields if name in data}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        where = str(origin)
        if isinstance(origin, _Origin) and prefix and kwargs:  # a section's check: the file that set all its keys
            files = {origin.at(prefix + name) for name in kwargs}
            where = files.pop() if len(files) == 1 else where
        raise ConfigError(f"{where}: {prefix.rstrip('.') or cls.__name__}: {err}") from None


def load_config(cls: type[T], path: str | pathlib.Path | None = None, overrides: Sequence[str] = ()) -> T:
    """`cls` from an optional YAML file (and its bases) and `key=value` overrides (overrides win)."""
    resolved = resolve_yaml(path) if path else ResolvedYaml({}, {}, [])
    top = str(pathlib.Path(path)) if path else "defaults"  # as the resolved sources spell it
    label = str(path) if path else "defaults"
    sources = dict(resolved.sources)
    if overrides:
        for item in overrides:  # validate override keys against the schema, naming the command line
            key = item.partition("=")[0]
            _check_key_path(cls, key.split("."), f"command-line override {item!r}")
            for stale in [k for k in sources if k == key or k.startswith(key + ".")]:
                del sources[stale]
        label += " + command line"
    return from_dict(cls, apply_overrides(resolved.data, overrides), _Origin(label, top, sources))


def to_dict(config: Any) -> Any:
    """Plain dict/list/scalar form of a config (for YAML/JSON output and checkpoints)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def _check_key_path(cls: Any, parts: list[str], origin: str) -> None:
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    head = parts[0]
    if head not in fields:
        close = difflib.get_close_matches(head, fields, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f"; valid keys: {', '.join(fields)}"
        raise ConfigError(f"{origin}: unknown key {head!r} in {cls.__name__}{hint}")
    if len(parts) > 1:
        sub = _dataclass_of(hints[head])
        if sub is None:
            raise ConfigError(f"{origin}: {head!r} is a value, not a section")
        _check_key_path(sub, parts[1:], origin)


def _dataclass_of(annotation: Any) -> Any:
    if dataclasses.is_dataclass(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _convert(annotation: Any, value: Any, origin: str | _Origin, key: str) -> Any:
    """Check `value` against `annotation`, converting lists to tuples and ints to floats."""
    origin_type = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin_type in (Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, origin, key)
            except ConfigError as err:
                errors.append(err)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{_where(origin, key)}: {key} = {value!r} matches none of {_type_name(annotation)}"
        )
    if origin_type is typing.Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{_where(origin, key)}: {key} = {value!r}; expected one of {list(choices)}")
        return value
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value if value is not None else {}, origin, key + ".")
    if origin_type in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_where(origin, key)}: {key} = {value!r}; expected a list ({_type_name(annotation)})")
        args = typing.get_args(annotation)
        item_type = args[0] if args else Any
        items = [_convert(item_type, v, origin, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin_type is tuple else items
    if origin_type is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_where(origin, key)}: {key} = {value!r}; expected a mapping")
        return dict(value)
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{_where(origin, key)}: {key} = {value!r}; expected a number")
        if not math.isfinite(value):  # YAML reads .nan / .inf as floats
            raise ConfigError(f"{_where(origin, key)}: {key} = {value!r}; expected a finite number")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{_where(origin, key)}: {key} = {value!r}; expected an integer")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{_where(origin, key)}: {key} = {value!r}; expected true or false")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{_where(origin, key)}: {key} = {value!r}; expected a string")
        return value
    return value


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
