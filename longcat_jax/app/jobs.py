"""A job of the app: one checked request (`RunPlan`), its place in the queue, its progress and its result."""

from __future__ import annotations

import dataclasses
import enum
import threading
import time
from pathlib import Path

from longcat_jax.pipelines.request import RunRequest
from longcat_jax.pipelines.tasks import RunPlan


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class JobCancelled(Exception):
    """Raised inside a running job at its next stage or denoising step after `Engine.cancel`."""


@dataclasses.dataclass
class StageProgress:
    """The stage a running job is in; `step` of `total` denoising steps where the stage denoises."""

    name: str
    step: int = 0
    total: int | None = None

    def describe(self) -> str:
        if not self.step and self.total is None:
            return self.name
        return f"{self.name}: step {self.step}" + (f"/{self.total}" if self.total else "")


@dataclasses.dataclass
class Job:
    """One request from the page. `plan` is the task registry's checked plan; the result fields are set when the
    job is done: `video` (mp4 in the output folder), `sidecar` (its provenance JSON), `summary` (the CLI's timing
    table). `error` is the message of a failed job, as the CLI prints it."""

    id: str
    request: RunRequest
    plan: RunPlan
    state: JobState = JobState.QUEUED
    created: float = dataclasses.field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    stage: StageProgress | None = None
    stages_done: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    video: Path | None = None
    sidecar: Path | None = None
    summary: str | None = None
    cancel_requested: threading.Event = dataclasses.field(default_factory=threading.Event)

    @property
    def task(self) -> str:
        return self.plan.task.name

    def check_cancelled(self) -> None:
        """Raises `JobCancelled` once a cancel was asked for."""
        if self.cancel_requested.is_set():
            raise JobCancelled(self.id)

    def elapsed(self, now: float | None = None) -> float:
        """Seconds since the job started (0 while queued), up to its end once finished."""
        if self.started is None:
            return 0.0
        return (self.finished or now or time.time()) - self.started
