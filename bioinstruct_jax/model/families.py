"""The one table of model families, looked up by HF `model_type` or GGUF `general.architecture`.

Adding a family is a module beside `llama.py` that defines a `Family`, plus one entry here.
"""

from __future__ import annotations

from typing import Any, Mapping

from bioinstruct_jax.model import llama, mistral, qwen2
from bioinstruct_jax.model.family import Family

FAMILIES: tuple[Family, ...] = (llama.FAMILY, qwen2.FAMILY, mistral.FAMILY)

_BY_MODEL_TYPE = {f.model_type: f for f in FAMILIES}
_BY_GGUF = {f.gguf_architecture: f for f in FAMILIES if f.gguf_architecture is not None}

# Every named architecture of every family (names are unique across families).
PRESETS: Mapping[str, Mapping[str, Any]] = {name: kw for f in FAMILIES for name, kw in f.presets.items()}


def by_model_type(model_type: str, origin: str = "config") -> Family:
    """The family of an HF `model_type`; a one-line error naming the known ones otherwise."""
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise ValueError(f"{origin}: model_type={model_type!r} is not supported "
                         f"(supported: {', '.join(_BY_MODEL_TYPE)})") from None


def by_gguf_architecture(arch: Any) -> Family | None:
    """The family of a GGUF `general.architecture`, None for one no family reads."""
    return _BY_GGUF.get(arch)


def gguf_architectures() -> tuple[str, ...]:
    return tuple(_BY_GGUF)


__all__ = ("FAMILIES", "PRESETS", "by_model_type", "by_gguf_architecture", "gguf_architectures")
