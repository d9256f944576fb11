"""Per-step training metrics on disk: `OUTPUT/metrics.csv` always, TensorBoard event files when a writer exists.

CSV columns: step (optimiser steps done), loss, learning_rate (the rate the step used), grad_norm (before
clipping), step_seconds (wall time of the step; the first of a run includes compilation). A resumed run drops
the rows after its checkpoint's step, so the file always describes one run. TensorBoard scalars (`train/loss`,
`train/learning_rate`, `train/grad_norm`, `train/step_seconds`) go to `OUTPUT/tensorboard/` through
`tensorboardX` if it is installed, else through `tensorboard`'s own event writer; without either, only the CSV.
Only process 0 writes (several hosts).
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import jax

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
COLUMNS = ("step", "loss", "learning_rate", "grad_norm", "step_seconds")


class _TensorBoardEvents:
    """Scalar summaries through tensorboard's event file writer (used when tensorboardX is absent)."""

    def __init__(self, folder: Path):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self._writer = EventFileWriter(str(folder))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=value)])
        self._writer.add_event(self._event(wall_time=time.time(), step=step, summary=summary))

    def close(self) -> None:
        self._writer.close()


def _tensorboard_writer(folder: Path):
    try:
        from tensorboardX import SummaryWriter

        return SummaryWriter(str(folder))
    except ImportError:
        pass
    try:
        return _TensorBoardEvents(folder)
    except ImportError:
        logger.info("Neither tensorboardX nor tensorboard is installed: metrics go to %s only", METRICS_NAME)
        return None


class MetricsLog:
    """Appends one row per step; `start_step` is the step the run starts from (rows after it are dropped)."""

    def __init__(self, output_dir: Path, start_step: int):
        self.enabled = jax.process_index() == 0
        self._tensorboard = None
        if not self.enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / METRICS_NAME
        rows = []
        if path.is_file() and start_step > 0:
            with path.open(newline="") as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= start_step]
        self._handle = path.open("w", newline="")
        self._csv = csv.DictWriter(self._handle, fieldnames=COLUMNS)
        self._csv.writeheader()
        self._csv.writerows(rows)
        self._handle.flush()
        self._tensorboard = _tensorboard_writer(output_dir / TENSORBOARD_DIR)

    def write(self, step: int, loss: float, learning_rate: float, grad_norm: float, seconds: float) -> None:
        if not self.enabled:
            return
        values = dict(zip(COLUMNS, (step, loss, learning_rate, grad_norm, seconds)))
        self._csv.writerow(values)
        self._handle.flush()
        if self._tensorboard is not None:
            for name in COLUMNS[1:]:
                self._tensorboard.add_scalar(f"train/{name}", float(values[name]), step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._handle.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
