"""Shared base for our TFDS builders: one source file (local path, manual_dir, or a URL with a
checksum), the array_record format (no TensorFlow needed), random-access data sources, and a
deterministic hash-based train/validation split.

TensorFlow is not installed: builders must be prepared with `file_format="array_record"` and read
with `builder.as_data_source()` (random access, what grain wants); `as_dataset()` would need TF.

A subclass sets `SOURCE_FILENAME` (the name looked for in manual_dir), optionally `SOURCE_URL` and
`SOURCE_SHA256`, and implements `_info` and `_split_generators` calling `self.source_file(dl)`.
A source may also be passed directly: `Builder(source_path="/data/x.json", data_dir=...)`.
`prepare_builder` / `data_sources` keep one prepared copy per source file content (the data
directory gets a fingerprint of the file), so a changed input file is never served stale.
"""

from __future__ import annotations

import hashlib
import inspect
import pathlib
from collections.abc import Mapping
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

ARRAY_RECORD = "array_record"
SPLITS = ("train", "validation")


def file_sha256(path: str | pathlib.Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_fraction(key: str, salt: str = "") -> float:
    """A stable number in [0, 1) from a string (sha256; the same on every machine and Python)."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(key: str, validation_fraction: float, salt: str = "") -> str:
    """"validation" for about `validation_fraction` of keys (chosen by hash), else "train".
    Adding or removing other records never moves a record between splits."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction} must be in [0, 1)")
    return "validation" if hash_fraction(key, salt) < validation_fraction else "train"


class SourceFileBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A GeneratorBasedBuilder reading one source file; array_record by default.

    Source resolution, first found: `source_path=` given to the constructor; `manual_dir /
    SOURCE_FILENAME` (DownloadConfig(manual_dir=...)); a download of `SOURCE_URL` (checked against
    `SOURCE_SHA256` when set). Tests never download: they pass a path or a manual_dir.
    """

    SOURCE_FILENAME: str = ""
    SOURCE_URL: str | None = None
    SOURCE_SHA256: str | None = None

    def __init__(self, *, source_path: str | pathlib.Path | None = None, file_format: str = ARRAY_RECORD,
                 **kwargs: Any):
        self.source_path = pathlib.Path(source_path) if source_path else None
        if self.source_path is not None and not self.source_path.is_file():
            raise FileNotFoundError(f"{type(self).__name__}: source file {self.source_path} does not exist")
        super().__init__(file_format=file_format, **kwargs)

    # TFDS locates a builder's checksums through its module; ours live beside the subclass's file.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))

    @classmethod
    def manual_instructions(cls) -> str:
        where = f" or let TFDS download {cls.SOURCE_URL}" if cls.SOURCE_URL else ""
        return f"Put {cls.SOURCE_FILENAME} in manual_dir (or pass source_path=){where}."

    def source_file(self, dl_manager: tfds.download.DownloadManager) -> pathlib.Path:
        """The local source file (see the class docstring for the order)."""
        if self.source_path is not None:
            return self.source_path
        tried = []
        manual = getattr(dl_manager, "_manual_dir", None)
        if manual:
            candidate = pathlib.Path(manual) / self.SOURCE_FILENAME
            if candidate.is_file():
                return candidate
            tried.append(str(candidate))
        if self.SOURCE_URL:
            path = pathlib.Path(dl_manager.download(self.SOURCE_URL))
            if self.SOURCE_SHA256:
                got = file_sha256(path)
                if got != self.SOURCE_SHA256:
                    raise ValueError(f"{self.SOURCE_URL}: sha256 {got} != expected {self.SOURCE_SHA256}")
            return path
        raise FileNotFoundError(f"{self.name}: no source file (tried {tried or 'no manual_dir'}); "
                                + self.manual_instructions())


def source_data_dir(data_dir: str | pathlib.Path, *inputs: str | pathlib.Path | None) -> pathlib.Path:
    """`data_dir`, or `data_dir/src-<sha256[:16]>` of the input files' contents (source, labels, ...)
    so that each content gets its own prepared copy."""
    data_dir = pathlib.Path(data_dir)
    files = [p for p in inputs if p is not None]
    if not files:
        return data_dir
    digest = hashlib.sha256("\n".join(file_sha256(p) for p in files).encode()).hexdigest()
    return data_dir / f"src-{digest[:16]}"


def prepare_builder(builder_cls: type[SourceFileBuilder], *, data_dir: str | pathlib.Path,
                    config: str | tfds.core.BuilderConfig | None = None,
                    source_path: str | pathlib.Path | None = None, manual_dir: str | pathlib.Path | None = None,
                    **builder_kwargs: Any) -> SourceFileBuilder:
    """Build (once; later calls reuse the prepared files) and return the builder. Keyword arguments
    ending in `_path` (e.g. labels_path) are input files too: their contents join the fingerprint."""
    extra = [v for k, v in builder_kwargs.items() if k.endswith("_path") and v]
    builder = builder_cls(data_dir=str(source_data_dir(data_dir, source_path, *extra)), config=config,
                          source_path=source_path, **builder_kwargs)
    download_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir else None)
    builder.download_and_prepare(download_config=download_config, file_format=ARRAY_RECORD)
    return builder


def data_sources(builder_cls: type[SourceFileBuilder], *, data_dir: str | pathlib.Path,
                 config: str | tfds.core.BuilderConfig | None = None,
                 source_path: str | pathlib.Path | None = None, manual_dir: str | pathlib.Path | None = None,
                 **builder_kwargs: Any) -> Mapping[str, Any]:
    """{split: random-access data source (len, [i] -> dict of numpy/bytes)} of a prepared builder."""
    builder = prepare_builder(builder_cls, data_dir=data_dir, config=config, source_path=source_path,
                              manual_dir=manual_dir, **builder_kwargs)
    return builder.as_data_source()


def decode_text(value: Any) -> str:
    """A `tfds.features.Text` value as read from a data source (bytes) as str."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "item"):
        value = value.item()
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return str(value)


__all__ = ["ARRAY_RECORD", "SPLITS", "SourceFileBuilder", "file_sha256", "hash_fraction", "hash_split",
           "source_data_dir", "prepare_builder", "data_sources", "decode_text"]
