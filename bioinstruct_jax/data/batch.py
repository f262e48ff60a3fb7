"""The batch a training step consumes: the names and dtypes of its arrays.

The data pipeline builds batches with these arrays, the train step reads them, and the memory
planner gives them abstract shapes; all three take the names and dtypes from here.
"""

from __future__ import annotations

BATCH_KEYS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions")
# Every batch array is int32 except the loss mask.
BATCH_DTYPES: dict[str, str] = {key: ("float32" if key == "loss_mask" else "int32") for key in BATCH_KEYS}

__all__ = ["BATCH_KEYS", "BATCH_DTYPES"]
