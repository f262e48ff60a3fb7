"""Command-line flags derived from a dataclass's fields, so a CLI declares each setting once.

A field made with `flag_field(default, Flag(...), ...)` carries its flags in its metadata; `add_flags`
adds each one to an argparse parser with the field's name as `dest` and the field's default (unless
the flag sets its own), and `from_args` builds the dataclass from the parsed flags through the typed
loader, so a bad value is the same `ConfigError` a YAML file or a `key=value` override would get.
A field without flags is not on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, TypeVar

from bioinstruct_jax.config.loader import from_dict

T = TypeVar("T")

FLAGS_METADATA = "flags"
_FIELD_DEFAULT = object()  # a Flag's default: the field's own


@dataclasses.dataclass(frozen=True)
class Flag:
    """One command-line flag of a field. name: e.g. `--top-p`; empty = `--` + the field name with
    dashes. type: argparse's `type=` (a range-checking parser). action: e.g. `store_true` /
    `store_false` (then no type). default: what argparse starts from when it differs from the field's
    default (e.g. None for "derived later"). aliases: earlier names of the flag, still accepted but not
    listed in --help (the parser's `add_alias`, cli/arguments.py)."""

    name: str = ""
    type: Callable[[str], Any] | None = None
    action: str | None = None
    help: str | None = None
    default: Any = _FIELD_DEFAULT
    aliases: tuple[str, ...] = ()


def flag_field(default: Any, *flags: Flag) -> Any:
    """A dataclass field with `default` and the given flags (none given: one plain flag)."""
    return dataclasses.field(default=default, metadata={FLAGS_METADATA: flags or (Flag(),)})


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add every flag of `cls`'s fields to `parser`, in field order."""
    for field in dataclasses.fields(cls):
        for flag in field.metadata.get(FLAGS_METADATA, ()):
            kwargs: dict[str, Any] = {
                "dest": field.name, "default": field.default if flag.default is _FIELD_DEFAULT else flag.default}
            if flag.action:
                kwargs["action"] = flag.action
            elif flag.type is not None:
                kwargs["type"] = flag.type
            if flag.help is not None:
                kwargs["help"] = flag.help
            name = flag.name or "--" + field.name.replace("_", "-")
            parser.add_argument(name, **kwargs)
            for alias in flag.aliases:
                parser.add_alias(alias, name)


def from_args(cls: type[T], args: argparse.Namespace, origin: str = "command line") -> T:
    """`cls` from the parsed flags of its fields (type-checked and validated by the loader)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(args, f.name)}
    return from_dict(cls, values, origin)
