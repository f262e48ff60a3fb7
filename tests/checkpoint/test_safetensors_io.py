"""safetensors_io.write_streamed: arrays written from their own buffer read back bit for bit."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from bioinstruct_jax.checkpoint.safetensors_io import SafetensorsFile, write_streamed


def test_write_streamed_round_trips_every_layout(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "bf16": rng.standard_normal((4, 6)).astype(ml_dtypes.bfloat16),
        "transposed": rng.standard_normal((5, 7)).astype(np.float32).T,  # not C-contiguous
        "strided_bf16": rng.standard_normal((8, 6)).astype(ml_dtypes.bfloat16)[::2],
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 4), np.float16),
        "mask": np.array([True, False, True]),
        "ids": np.arange(6, dtype=np.int64).reshape(2, 3),
    }
    path = tmp_path / "t.safetensors"
    written = write_streamed(path, [(k, v.shape, v.dtype) for k, v in tensors.items()], tensors.__getitem__)
    assert written == sum(v.nbytes for v in tensors.values())
    f = SafetensorsFile(path)
    assert f.keys() == list(tensors)
    for name, value in tensors.items():
        got = f.get(name)
        assert got.shape == value.shape and got.dtype == value.dtype, name
        assert got.tobytes() == np.ascontiguousarray(value).tobytes(), name
