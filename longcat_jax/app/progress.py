"""A job's progress as the tasks report it, and its cancel points.

The tasks time every stage through `pipe.stats` (`RunStats.stage`), and each denoising loop reports its steps to
the `longcat_jax.progress.on_steps` listeners of its thread (`denoise.sample`: the loop's name, step i of n, where
n is the schedule it walks: the step count asked for, or less in a refinement that starts at t = 0.5). `JobStats`
is a `RunStats` that tells the engine when a stage starts and when a step ends, and checks for a cancel at both
points: a cancelled job stops at its next stage or step, before anything is written.

    stats = JobStats(job, engine_notify)
    with on_steps(stats.step_done):          # the worker thread's denoising steps, for this job
        task.run(pipe, setup, stages)        # pipe.stats is stats
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

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
            self.job.stage = StageProgress(record.name)
            self._on_change(self.job)
            yield record
        self.job.stages_done.append(f"{record.name} ({record.seconds:.1f} s)")
        self._on_change(self.job)

    def step_done(self, loop: str, step: int, total: int) -> None:
        """An `on_steps` listener: step `step` of `total` of the denoising loop `loop` is done. Shown under the
        stage that runs it (a long video's second segment is "continuation denoising #2"); then the job stops here
        if it was cancelled."""
        stage = self.job.stage.name if self.job.stage is not None else loop
        self.job.stage = StageProgress(stage, step, total)
        self._on_change(self.job)
        self.job.check_cancelled()
