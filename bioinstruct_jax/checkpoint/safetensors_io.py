"""Minimal, memory-mapped safetensors reading and streaming writing.

Reading maps the file and returns numpy views, so a caller can take one tensor, or one slice of
one tensor, without reading the rest (bfloat16 comes back as `ml_dtypes.bfloat16`). Writing
streams tensors to disk one at a time after a header computed from shapes alone, so exporting a
model never holds more than the tensor being written. The format: an 8-byte little-endian header
length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw bytes.
"""

from __future__ import annotations

import json
import mmap
import pathlib
import struct
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read as such (truncated, corrupt header, ...)."""


class SafetensorsFile:
    """Read-only, memory-mapped view of one `.safetensors` file."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        size = self.path.stat().st_size
        if size < 8:
            raise SafetensorsError(f"{self.path}: file is {size} bytes, too short to be safetensors")
        with open(self.path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if 8 + header_len > size:
                raise SafetensorsError(
                    f"{self.path}: header claims {header_len} bytes but the file has {size} (truncated?)"
                )
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise SafetensorsError(f"{self.path}: corrupt header ({err})") from None
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self.metadata = header.pop("__metadata__", {}) or {}
        self._base = 8 + header_len
        self._entries = header
        for name, entry in header.items():
            begin, end = entry["data_offsets"]
            if self._base + end > size:
                raise SafetensorsError(
                    f"{self.path}: tensor {name!r} needs bytes up to {self._base + end} but the file has "
                    f"{size} (truncated?)"
                )
            if entry["dtype"] not in _DTYPES:
                raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported dtype {entry['dtype']}")

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        return _DTYPES[self._entries[name]["dtype"]]

    def get(self, name: str) -> np.ndarray:
        """A read-only numpy view of tensor `name` (no copy until sliced or converted)."""
        entry = self._entries[name]
        begin, end = entry["data_offsets"]
        dtype = _DTYPES[entry["dtype"]]
        arr = np.frombuffer(self._map, dtype=dtype, count=(end - begin) // dtype.itemsize,
                            offset=self._base + begin)
        return arr.reshape(entry["shape"])


def dtype_name(dtype: np.dtype) -> str:
    try:
        return _NAMES[np.dtype(dtype)]
    except KeyError:
        raise SafetensorsError(f"dtype {dtype} cannot be written to safetensors") from None


def _raw_bytes(arr: np.ndarray) -> memoryview:
    """The array's own buffer as bytes, without the copy `tobytes()` makes (a non-contiguous array
    is copied once into C order). Viewing as uint8 also covers ml_dtypes types such as bfloat16,
    which the buffer protocol cannot export directly."""
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return memoryview(arr.reshape(-1).view(np.uint8))


def write_streamed(path: str | pathlib.Path, specs: Iterable[tuple[str, tuple[int, ...], np.dtype]],
                   fetch: Callable[[str], np.ndarray], metadata: dict[str, str] | None = None) -> int:
    """Write tensors to `path`: the header from `specs`, then `fetch(name)` one tensor at a time.

    Returns the number of data bytes written. Each fetched array must match its spec; its buffer is
    written as is (no byte copy), so the writer adds nothing to the memory the fetched array holds.
    """
    specs = list(specs)
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": dtype_name(dtype), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    name = None
    try:
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name, shape, dtype in specs:
                arr = np.asarray(fetch(name))
                if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
                    raise SafetensorsError(
                        f"tensor {name!r}: expected {tuple(shape)} {np.dtype(dtype)}, got {arr.shape} {arr.dtype}"
                    )
                f.write(_raw_bytes(arr))
                del arr
    except OSError as err:  # a full disk or a vanished mount: say which file (and tensor) it hit
        if err.filename is not None:
            raise
        where = f"{path} (writing tensor {name!r})" if name is not None else str(path)
        raise OSError(err.errno, err.strerror, where) from err
    return offset
