"""A job's progress as the tasks report it, and its cancel point.

The tasks time every stage through `pipe.stats` (`RunStats.stage`) and append each denoising step's time to the
stage's `step_times` (`denoise.sample`). `JobStats` is a `RunStats` that also tells the engine when a stage starts
and when a step ends, and checks for a cancel at both points: a cancelled job stops at its next stage or step,
before anything is written. The step total is the length of the stage's progress bar (the schedule `sample` walks:
the step count the user asked for, or less in a refinement that starts at t = 0.5).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from tqdm.std import tqdm

from longcat_jax.app.jobs import Job, StageProgress
from longcat_jax.pipelines.stats import RunStats, StageTime


class JobStats(RunStats):
    """The stage timings of one job (the CLI's summary), reported to `on_change` as they happen."""

    def __init__(self, job: Job, on_change: Callable[[Job], None]):
        super().__init__()
        self.job = job
        self._on_change = on_change

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[StageTime]:
        self.job.check_cancelled()
        with super().stage(name) as record:
            record.step_times = StepLog(self, name, record.name)
            self.job.stage = StageProgress(record.name)
            self._on_change(self.job)
            yield record
        self.job.stages_done.append(f"{record.name} ({record.seconds:.1f} s)")
        self._on_change(self.job)

    def step_done(self, bar_name: str, stage_name: str, steps: int) -> None:
        """Called after each denoising step of the stage: reports it, then stops here if the job was cancelled."""
        self.job.stage = StageProgress(stage_name, steps, _bar_total(bar_name))
        self._on_change(self.job)
        self.job.check_cancelled()


class StepLog(list):
    """A stage's `step_times` that reports each step as `denoise.sample` appends its time."""

    def __init__(self, stats: JobStats, bar_name: str, stage_name: str):
        super().__init__()
        self._stats = stats
        self._bar_name = bar_name
        self._stage_name = stage_name

    def append(self, seconds: float) -> None:
        super().append(seconds)
        self._stats.step_done(self._bar_name, self._stage_name, len(self))


def _bar_total(name: str) -> int | None:
    """The length of the open progress bar named `name` (`sample` names its bar after the stage); None if none is
    open. tqdm keeps its open bars in a class-level set guarded by its lock."""
    with tqdm.get_lock():
        totals = [bar.total for bar in tqdm._instances if bar.desc == name]
    return totals[-1] if totals else None
