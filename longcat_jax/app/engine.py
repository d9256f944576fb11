"""The app's engine: a queue of jobs run one at a time on the models kept warm, with cancel and results.

    engine = Engine(AppSettings(model_path=None, output_dir=Path("outputs/app")))
    engine.start()                                   # the worker thread; `warm_up()` loads the models first
    job = engine.submit(RunRequest(prompt="..."))    # checked now (the CLI's messages), then queued
    engine.cancel(job.id)                            # queued: dropped; running: stops at its next stage or step

A request is checked by the task registry's `plan_run` before it is queued, so a bad one is refused with the
CLI's message at once and never takes a turn; that includes its memory plan, made for the request as the CLI
makes it (a request no placement fits within `--max-device-memory`, or the device, is refused, naming the budget
that would hold it). The worker runs each plan with its task's `run` on the warm pipeline (`models.WarmModels`:
loaded again when the request needs a more frugal placement than the loaded one; the prompts encoded first, and the
text encoder released after them where the plan needs its memory for the DiT: `app.text_encoder`) and writes the
video and its provenance sidecar into the output folder as the CLI does (`longcat_jax.provenance`: each atomically,
the same format, so `python -m longcat_jax.generate --from-json NAME.json` makes the video again; its `command` is
the CLI command of the same request), nothing before the last step: a cancelled or failed job leaves no file. An error
in one job (the CLI's `LongCatError`, or anything unexpected, logged with its traceback) fails that job only.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from longcat_jax.app.jobs import Job, JobCancelled, JobState
from longcat_jax.app.models import WarmModels
from longcat_jax.app.progress import JobStats
from longcat_jax.errors import InputError, LongCatError
from longcat_jax.memory.plan import MemoryBudgetError
from longcat_jax.pipelines.request import RunInputs, RunRequest, flag_name
from longcat_jax.pipelines.stats import RunStats
from longcat_jax.pipelines.tasks import plan_run, task_of
from longcat_jax.progress import on_steps
from longcat_jax.provenance import sidecar_path, write_video_and_sidecar

logger = logging.getLogger(__name__)

Listener = Callable[[Job], None]
WARM_UP_SIDE = 64  # pixels: the smallest video's side, for the memory plan of a warm-up that the default outgrows


@dataclasses.dataclass(frozen=True)
class AppSettings:
    """What the app is started with and every request gets: the checkpoint (None: the built-in model), where
    results go, and the CLI's launch-level flags (dtype, initial `--quantize`, device mesh, memory budget)."""

    model_path: Path | None
    output_dir: Path
    dtype: str | None = None
    quantize: str = "none"
    context_parallel: int | None = None
    fsdp: bool = False
    max_device_memory: str | None = None

    def request(self, **fields) -> RunRequest:
        """A request with the app's launch settings; `fields` are the page's (quantize may be changed there)."""
        base = dict(model_path=self.model_path, dtype=self.dtype, quantize=self.quantize,
                    context_parallel=self.context_parallel, fsdp=self.fsdp, max_device_memory=self.max_device_memory)
        return RunRequest(**{**base, **fields})


class Engine:
    """One queue, one worker thread, one set of warm models (see the module docstring)."""

    def __init__(self, settings: AppSettings):
        self.settings = settings
        self.models = WarmModels(settings.model_path)
        self.results: list[Job] = []  # finished jobs with a video, oldest first
        self._jobs: dict[str, Job] = {}
        self._queue: collections.deque[Job] = collections.deque()
        self._lock = threading.Condition()
        self._listeners: list[Listener] = []
        self._counter = itertools.count(1)
        self._worker: threading.Thread | None = None
        self._stopping = False

    # ------------------------------------------------------------------------------------------------ control

    def warm_up(self) -> RunStats:
        """Loads the models (before the page opens, so no user waits for it) as the memory plan of the app's
        default request places them; where the default video cannot fit, as that of the smallest video does (a
        larger request later loads them again, placed for it: `models.WarmModels`)."""
        try:
            plan = plan_run(self.settings.request())
        except MemoryBudgetError as err:
            logger.warning("The default video does not fit (%s); loading the models for smaller videos: each "
                           "request is checked against the memory when it is submitted", err)
            plan = plan_run(self.settings.request(height=WARM_UP_SIDE, width=WARM_UP_SIDE, num_frames=1))
        stats = RunStats()
        self.models.for_plan(plan, stats)
        return stats

    def start(self) -> None:
        """Starts the worker thread (once)."""
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="longcat-app-worker", daemon=True)
                self._worker.start()

    def stop(self, timeout: float | None = None) -> None:
        """Lets the running job finish, drops the queue, and ends the worker thread."""
        with self._lock:
            self._stopping = True
            dropped = list(self._queue)
            for job in dropped:
                self._finish(job, JobState.CANCELLED)
            self._queue.clear()
            self._lock.notify_all()
        for job in dropped:  # outside the lock, as `cancel` does
            self._notify(job)
        if self._worker is not None:
            self._worker.join(timeout)

    def add_listener(self, listener: Listener) -> None:
        """`listener(job)` is called at every change of a job (stage, step, state), on the thread that made it: the
        worker's, or that of a `cancel` call."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    # ------------------------------------------------------------------------------------------------ requests

    def submit(self, request: RunRequest) -> Job:
        """Checks `request` (raises the CLI's `LongCatError` when it is bad) and queues it; its output goes to the
        output folder under the job's id."""
        if request.output_format != "mp4":
            raise InputError(f"the app writes mp4 (the page plays it); got --output-format {request.output_format}")
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{next(self._counter):03d}-{task_of(request).name}"
        request = dataclasses.replace(request, output_path=self.settings.output_dir / f"{job_id}.mp4")
        plan = plan_run(request)
        job = Job(job_id, request, plan)
        with self._lock:
            if self._stopping:
                raise InputError("the app is shutting down; restart it to run more jobs")
            self._jobs[job.id] = job
            self._queue.append(job)
            self._lock.notify_all()
        logger.info("Queued %s (%s), position %d", job.id, job.task, self.position(job.id))
        return job

    def cancel(self, job_id: str) -> bool:
        """Cancels a queued job (dropped at once) or a running one (stops at its next stage or denoising step,
        leaving no file). False when the job is finished or its output is already written."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state.finished or job.cancel_requested.is_set() or job.video is not None:
                return False
            if job.state is JobState.QUEUED:
                self._queue.remove(job)
                self._finish(job, JobState.CANCELLED)
            else:
                job.cancel_requested.set()
        logger.info("Cancel of %s asked", job_id)
        self._notify(job)
        return True

    def job(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise InputError(f"no job {job_id!r}; the queue lists the jobs since the app started")
        return job

    def jobs(self) -> list[Job]:
        """Every job since start, newest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda job: job.created, reverse=True)

    def position(self, job_id: str) -> int | None:
        """1 for the next job to run, 2 behind it, ...; 0 while it runs; None once finished."""
        with self._lock:
            job = self._jobs[job_id]
            if job.state is JobState.RUNNING:
                return 0
            if job.state is JobState.QUEUED:
                return self._queue.index(job) + 1
            return None

    # ------------------------------------------------------------------------------------------------ the worker

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                job.state, job.started = JobState.RUNNING, time.time()
            self._notify(job)
            state = JobState.FAILED
            try:
                self._run(job)
                state = JobState.DONE
            except JobCancelled:
                state = JobState.CANCELLED
                logger.info("Cancelled %s; no output was written", job.id)
            except LongCatError as err:
                job.error = str(err)
                logger.error("%s failed: %s", job.id, err)
            except Exception as err:  # a bug or a device error must not end the worker: the next job still runs
                job.error = _unexpected_error(err)
                logger.exception("%s failed", job.id)
            finally:
                with self._lock:
                    self._finish(job, state)
            self._notify(job)

    def _run(self, job: Job) -> None:
        """Runs the job's plan on the warm models and writes its video and sidecar."""
        plan, request = job.plan, job.request
        stats = JobStats(job, self._notify)
        pipe = self.models.for_plan(plan, stats)
        self.models.encode_prompts(plan, stats)
        with on_steps(stats.step_done):  # this thread's denoising steps: progress and the cancel point
            video = plan.task.run(pipe, plan.setup, plan.stages)
        fps = request.fps or video.fps
        sidecar = sidecar_path(plan.output_path, "mp4")
        video_path = write_video_and_sidecar(plan, request, video.frames, fps, stats, command=cli_command(request))
        try:
            summary = stats.summary()
            with self._lock:  # a cancel asked while writing still wins; from the commit on, cancel() says no
                job.check_cancelled()
                job.video, job.sidecar, job.summary = video_path, sidecar, summary
        except BaseException:  # cancelled while writing: no file of the job stays
            video_path.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
            raise
        logger.info("%s wrote %s (%d frames, %dx%d, %g fps)", job.id, video_path, len(video.frames), video.frames.shape[2],
                    video.frames.shape[1], fps)

    def _finish(self, job: Job, state: JobState) -> None:
        """Marks `job` finished (the lock held); a done job joins the results. The job keeps its settings, not the
        frames of its inputs (a long-running app would otherwise hold every uploaded video)."""
        job.state, job.finished, job.stage = state, time.time(), None
        job.plan = dataclasses.replace(job.plan, setup=dataclasses.replace(job.plan.setup, inputs=RunInputs()))
        if state is JobState.DONE:
            self.results.append(job)

    def _notify(self, job: Job) -> None:
        for listener in list(self._listeners):
            listener(job)


def cli_command(request: RunRequest) -> list[str]:
    """The words of `python -m longcat_jax.generate ...` with the flags that run `request` (those not at their
    default): the sidecar's `command`, which a user can run instead of the app."""
    words = ["python", "-m", "longcat_jax.generate"]
    for field in dataclasses.fields(RunRequest):
        value = getattr(request, field.name)
        if value == field.default:
            continue
        flag = flag_name(field.name)
        if isinstance(value, bool):
            words.append(flag)
        elif isinstance(value, tuple):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(value)]
    return words


def _unexpected_error(err: Exception) -> str:
    """The page's message for an error that is not the CLI's: the device running out of memory (the memory plan's
    estimates were short: what they do not see grew) says what to do; anything else is an internal error."""
    if "RESOURCE_EXHAUSTED" in str(err):
        return ("the device ran out of memory during this job (more than its memory plan estimated); ask for a "
                "smaller video, or restart the app with a lower --max-device-memory, so that every request is "
                "placed with more room to spare")
    return f"internal error ({type(err).__name__}: {err}); the server log has the traceback"
