"""A resumed run's metrics: the steps the killed run logged after its last checkpoint are logged
again, so both metrics.jsonl and TensorBoard must show each step once.

TensorBoard's rule (and tensorboardX's `purge_step`): an event file that begins with a
SessionLog.START event at step S hides every earlier event of step >= S. The event files are read
back here with a TFRecord parser of their own, so the check does not rely on the writer.
"""

from __future__ import annotations

import json
import pathlib
import struct
import time

from tensorboardX.proto import event_pb2

from bioinstruct_jax.train.metrics import MetricsLogger


def read_events(path: pathlib.Path) -> list:
    """Every Event of a TFRecord file (length u64, its crc u32, payload, payload crc u32)."""
    data, events, pos = path.read_bytes(), [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        payload = data[pos + 12: pos + 12 + length]
        events.append(event_pb2.Event.FromString(payload))
        pos += 12 + length + 4
    return events


def visible_scalars(tb_dir: pathlib.Path) -> list[tuple[int, float]]:
    """(step, value) of train/loss as TensorBoard shows it: files in order, purges applied."""
    shown: list[tuple[int, float]] = []
    for f in sorted(tb_dir.glob("events.out.tfevents.*")):  # by name = by creation second, as TensorBoard reads
        for ev in read_events(f):
            if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START:
                shown = [(s, v) for s, v in shown if s < ev.step]
            for value in ev.summary.value:
                if value.tag == "train/loss":
                    shown.append((ev.step, value.simple_value))
    return shown


def test_resume_logs_each_step_once_in_jsonl_and_tensorboard(tmp_path):
    first = MetricsLogger(str(tmp_path), tensorboard=True)
    for step in range(1, 7):  # killed after logging step 6; its last checkpoint was step 4
        first.log(step, {"loss": 10.0 + step})
    first.close()  # the killed run's writer had flushed what it logged
    time.sleep(1.1)  # event files are named by the second they are created in (a real restart takes longer)
    resumed = MetricsLogger(str(tmp_path), tensorboard=True, resume_step=4)
    for step in (5, 6, 7):
        resumed.log(step, {"loss": 20.0 + step})
    resumed.close()

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [(1, 11.0), (2, 12.0), (3, 13.0), (4, 14.0),
                                                          (5, 25.0), (6, 26.0), (7, 27.0)]
    assert visible_scalars(tmp_path / "tensorboard") == [(1, 11.0), (2, 12.0), (3, 13.0), (4, 14.0),
                                                         (5, 25.0), (6, 26.0), (7, 27.0)]
