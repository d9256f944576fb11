"""Per-step metrics: the CSV keeps one run's rows across a resume; TensorBoard scalars when tensorboardX is there."""

import csv
import struct

import pytest

from longcat_jax.training.run_log import METRICS_NAME, TENSORBOARD_DIR, MetricsLog


def test_the_csv_drops_rows_past_the_resumed_step(tmp_path):
    log = MetricsLog(tmp_path, 0)
    for step in range(1, 5):
        log.write(step, 1.0 / step, 1e-4, 0.5, 0.01)
    log.close()
    resumed = MetricsLog(tmp_path, 2)  # the checkpoint was at step 2: rows 3 and 4 belong to a lost run
    resumed.write(3, 0.3, 1e-4, 0.5, 0.01)
    resumed.close()
    with (tmp_path / METRICS_NAME).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and float(rows[-1]["loss"]) == pytest.approx(0.3)
    assert list(rows[0]) == ["step", "loss", "learning_rate", "grad_norm", "step_seconds"]


def test_tensorboard_scalars_are_written(tmp_path):
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    log = MetricsLog(tmp_path, 0)
    log.write(1, 0.75, 1e-4, 0.5, 0.01)
    log.close()
    files = list((tmp_path / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert len(files) == 1
    data, scalars = files[0].read_bytes(), {}
    while data:  # TFRecord: length, its crc, the Event, its crc
        (length,) = struct.unpack("<Q", data[:8])
        event = event_pb2.Event.FromString(data[12 : 12 + length])
        scalars.update({value.tag: (event.step, value.simple_value) for value in event.summary.value})
        data = data[16 + length :]
    assert scalars["train/loss"] == (1, pytest.approx(0.75))
    assert set(scalars) == {"train/loss", "train/learning_rate", "train/grad_norm", "train/step_seconds"}
