"""The app's engine on the built-in model (CPU): queue order and positions, cancel of queued and running jobs, the
CLI's messages for bad requests, warm models reused across jobs, a failed job that leaves the worker serving, and
the provenance sidecar: the CLI's format, whose command is the CLI's for the same request and which `--from-json`
makes the same video from."""

from __future__ import annotations

import dataclasses
import logging
import shlex
import threading
import time
import types

import numpy as np
import pytest

from longcat_jax import generate
from longcat_jax.app.engine import AppSettings, Engine, cli_command
from longcat_jax.app.form import FormValues, build_request
from longcat_jax.app.jobs import Job, JobState
from longcat_jax.app.models import LoadSetting, WarmModels
from longcat_jax.app.views import header
from longcat_jax.errors import InputError
from longcat_jax.models.text_encoder.prompt import is_released
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.request import RunInputs, RunRequest
from longcat_jax.pipelines.stats import RunStats
from longcat_jax.pipelines.tasks import plan_run
from longcat_jax.provenance import FORMAT, FORMAT_VERSION, TOP_KEYS, read_sidecar
from longcat_jax.video_io import read_video, write_mp4

SMALL = dict(task="t2v", height=64, width=64, num_frames=5, num_inference_steps=2)
TIMEOUT = 120


@pytest.fixture(scope="module")
def builtin_loads() -> list[str]:
    """The quantize mode of every load of the built-in model by the module's engine."""
    return []


@pytest.fixture(scope="module")
def engine(tmp_path_factory, builtin_loads):
    """One engine for the module (its models loaded once), with every load of the built-in model counted."""
    builtin = LongCatPipeline.builtin

    def counted(*args, **kwargs):
        builtin_loads.append(kwargs.get("quantize"))
        return builtin(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LongCatPipeline, "builtin", counted)
        engine = Engine(AppSettings(model_path=None, output_dir=tmp_path_factory.mktemp("app_outputs"),
                                    context_parallel=1))
        engine.warm_up()
        engine.start()
        yield engine
        engine.stop(timeout=TIMEOUT)


class Gate:
    """A listener that holds the worker inside `job_id` at its first denoising step until `release()`."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.job_id: str | None = None
        self.reached = threading.Event()
        self._open = threading.Event()
        engine.add_listener(self)

    def __call__(self, job: Job) -> None:
        if job.id == self.job_id and job.stage is not None and job.stage.step >= 1 and not self.reached.is_set():
            self.reached.set()
            self._open.wait(TIMEOUT)

    def hold(self, job: Job) -> None:
        self.job_id = job.id
        assert self.reached.wait(TIMEOUT), "the held job never reached a denoising step"

    def release(self) -> None:
        self._open.set()
        self.engine.remove_listener(self)


def wait_finished(*jobs: Job) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not all(job.state.finished for job in jobs):
        assert time.monotonic() < deadline, [job.state for job in jobs]
        time.sleep(0.02)


def test_jobs_queue_in_order_one_at_a_time(engine):
    gate = Gate(engine)
    first = engine.submit(engine.settings.request(**SMALL, seed=1))
    gate.hold(first)
    second = engine.submit(engine.settings.request(**SMALL, seed=2))
    third = engine.submit(engine.settings.request(**SMALL, seed=3))
    try:
        assert [engine.position(job.id) for job in (first, second, third)] == [0, 1, 2]
        assert (first.state, second.state, third.state) == (JobState.RUNNING, JobState.QUEUED, JobState.QUEUED)
        assert first.stage.name == "t2v denoising" and first.stage.step == 1 and first.stage.total == 2
    finally:
        gate.release()
    wait_finished(first, second, third)
    assert [job.state for job in (first, second, third)] == [JobState.DONE] * 3
    assert first.finished <= second.started and second.finished <= third.started
    assert [job.id for job in engine.results[-3:]] == [first.id, second.id, third.id]
    for job in (first, second, third):
        assert engine.position(job.id) is None
        assert job.plan.setup.inputs == RunInputs()  # a finished job holds no input frames
        frames, fps = read_video(job.video)
        assert frames.shape == (5, 64, 64, 3) and fps == 15.0


def test_cancel_of_a_queued_job_drops_it(engine):
    gate = Gate(engine)
    running = engine.submit(engine.settings.request(**SMALL))
    gate.hold(running)
    queued = engine.submit(engine.settings.request(**SMALL))
    try:
        assert engine.cancel(queued.id)
        assert queued.state is JobState.CANCELLED and engine.position(queued.id) is None
        assert not engine.cancel(queued.id)  # once is enough
    finally:
        gate.release()
    wait_finished(running)
    assert running.state is JobState.DONE
    assert queued.started is None and queued.video is None
    assert not list(engine.settings.output_dir.glob(f"*{queued.id}*"))


def test_cancel_of_a_running_job_stops_it_and_leaves_no_file(engine):
    job_ids = []

    def cancel_at_first_step(job: Job) -> None:
        if job.id in job_ids and job.stage is not None and job.stage.step == 1 and not job.cancel_requested.is_set():
            assert engine.cancel(job.id)

    engine.add_listener(cancel_at_first_step)
    try:
        # a prompt of its own: the last job's prompts stay cached, and would skip the text encoding
        job = engine.submit(engine.settings.request(**{**SMALL, "num_inference_steps": 4}, prompt="a kite"))
        job_ids.append(job.id)
        wait_finished(job)
    finally:
        engine.remove_listener(cancel_at_first_step)
    assert job.state is JobState.CANCELLED
    assert [done.split(" (")[0] for done in job.stages_done] == ["text encoding"]  # stopped in its denoising
    assert job.video is None and job.sidecar is None
    assert not list(engine.settings.output_dir.glob(f"*{job.id}*"))  # no video, sidecar or partial file
    assert not engine.cancel(job.id)


def test_a_cancel_while_the_output_is_written_still_leaves_no_file(engine):
    job_ids = []

    def cancel_while_writing(job: Job) -> None:
        if job.id in job_ids and job.stage is not None and job.stage.name == "write output":
            engine.cancel(job.id)

    engine.add_listener(cancel_while_writing)
    try:
        job = engine.submit(engine.settings.request(**SMALL))
        job_ids.append(job.id)
        wait_finished(job)
    finally:
        engine.remove_listener(cancel_while_writing)
    assert job.state is JobState.CANCELLED and job.video is None
    assert not list(engine.settings.output_dir.glob(f"*{job.id}*"))


@pytest.mark.parametrize(
    ("form", "argv"),
    [
        (FormValues(task="t2v", size="custom", height=100, width=64), ["--height", "100", "--width", "64"]),
        (FormValues(task="i2v"), ["--task", "i2v"]),
        (FormValues(task="continuation", num_frames=5, num_cond_frames=4), ["--task", "continuation"]),
    ],
)
def test_a_bad_request_gets_the_cli_message_and_is_not_queued(engine, tmp_path, form, argv):
    before = len(engine.jobs())
    if form.task == "continuation":  # a real video, so the refusal is the condition-frame rule
        clip = write_mp4(tmp_path / "clip.mp4", np.zeros((9, 64, 64, 3), np.uint8), fps=15)
        form = dataclasses.replace(form, video=str(clip))
        argv = [*argv, "--video", str(clip), "--num-frames", "5", "--num-cond-frames", "4"]
    with pytest.raises(InputError) as cli:
        plan_run(generate.parse_request([*argv, "--context-parallel", "1"]))
    with pytest.raises(InputError) as app:
        engine.submit(build_request(form, engine.settings, tmp_path))
    assert str(app.value) == str(cli.value)
    assert len(engine.jobs()) == before


def test_a_second_request_reuses_the_loaded_models(engine, builtin_loads):
    """Without a budget the plan has room for the text encoder beside the DiT: it stays loaded (never released, never
    loaded again); the last job's prompt embeddings stay cached, so the same prompt again is not encoded again."""
    loads = engine.models.loads
    pipeline = engine.models.pipeline
    encoder = pipeline.text_encoder
    first = engine.submit(engine.settings.request(**SMALL, prompt="a red ball"))
    second = engine.submit(engine.settings.request(**SMALL, prompt="a red ball", seed=5))
    third = engine.submit(engine.settings.request(**SMALL, prompt="a green tree", seed=5))
    wait_finished(first, second, third)
    assert (first.state, second.state, third.state) == (JobState.DONE, JobState.DONE, JobState.DONE)
    assert engine.models.loads == loads and engine.models.pipeline is pipeline
    assert builtin_loads == ["none"]  # the warm-up's load, none since
    stages = [[done.split(" (")[0] for done in job.stages_done] for job in (first, second, third)]
    assert not any("load models" in done or "load text encoder" in done for done in stages)
    assert "text encoding" in stages[0] and "text encoding" not in stages[1] and "text encoding" in stages[2]
    assert pipeline.text_encoder is encoder and not is_released(encoder)
    assert "text encoder: kept on the device between jobs" in first.summary
    assert "released after encoding" not in first.summary + second.summary + third.summary


def test_a_failing_job_fails_alone(engine):
    """An unexpected error inside a job fails that job with a message (no traceback; the device running out of memory
    says what to do) and the next job runs."""
    gate = Gate(engine)
    running = engine.submit(engine.settings.request(**SMALL))
    gate.hold(running)
    broken = engine.submit(engine.settings.request(**SMALL))
    out_of_memory = engine.submit(engine.settings.request(**SMALL))
    after = engine.submit(engine.settings.request(**SMALL))

    def raising(message: str):
        def run(pipe, setup, stages):
            raise RuntimeError(message)

        return run

    for job, message in ((broken, "device lost"), (out_of_memory, "RESOURCE_EXHAUSTED: Out of memory allocating")):
        job.plan = dataclasses.replace(job.plan, task=dataclasses.replace(job.plan.task, run=raising(message)))
    gate.release()
    wait_finished(running, broken, out_of_memory, after)
    assert [job.state for job in (running, broken, out_of_memory, after)] == [
        JobState.DONE, JobState.FAILED, JobState.FAILED, JobState.DONE]
    assert broken.error == "internal error (RuntimeError: device lost); the server log has the traceback"
    assert out_of_memory.error.startswith("the device ran out of memory during this job")
    assert "--max-device-memory" in out_of_memory.error
    for job in (broken, out_of_memory):
        assert not list(engine.settings.output_dir.glob(f"*{job.id}*"))


@pytest.fixture(scope="module")
def cat_job(engine, tmp_path_factory) -> Job:
    """A finished job of the page's form with a prompt, negative prompt, guidance and seed of its own."""
    form = FormValues(task="t2v", prompt="a cat", negative_prompt="blur", size="custom", height=64, width=64,
                      num_frames=5, num_inference_steps=2, guidance_scale=3.0, seed="7", bsa="480p_no_bsa")
    job = engine.submit(build_request(form, engine.settings, tmp_path_factory.mktemp("cat_uploads")))
    wait_finished(job)
    assert job.state is JobState.DONE, job.error
    return job


def test_the_cli_command_of_a_request_parses_back_to_it():
    """Repeated flags (--lora, --segment-prompt) and switches come back as the CLI spells them."""
    request = RunRequest(task="long", prompt="a cat", segment_prompts=("it sits", "it sleeps"), distill=True,
                         lora=("a.safetensors:0.5",), num_segments=2, output_size="generated")
    assert generate.parse_request(cli_command(request)[3:]) == request


def test_the_sidecar_holds_the_provenance_and_the_cli_command(cat_job):
    """The app writes the CLI's sidecar (`longcat_jax.provenance`, read back by its checking reader)."""
    record = read_sidecar(cat_job.sidecar)
    assert cat_job.sidecar == cat_job.video.with_suffix(".json")
    assert tuple(record) == TOP_KEYS and (record["format"], record["format_version"]) == (FORMAT, FORMAT_VERSION)
    assert (record["task"], record["prompt"], record["negative_prompt"], record["seed"]) == ("t2v", "a cat", "blur", 7)
    assert record["stages"] == [{"stage": "t2v", "height": 64, "width": 64, "num_frames": 5, "num_cond_frames": None,
                                 "num_inference_steps": 2, "guidance_scale": 3.0, "seed": 7, "bsa": None,
                                 "checkpoint_loras": []}]
    assert record["precision"] == {"dtype": "float32", "quantize": "none"} and record["loras"] == []
    assert record["checkpoint"]["builtin"] is True and record["batch"] is None
    assert record["output"] == {"path": str(cat_job.video.resolve()), "format": "mp4", "frames": 5, "height": 64,
                                "width": 64, "fps": 15.0}
    assert record["software"]["jax"] and record["software"]["devices"] and record["software"]["longcat_jax"]
    denoising = [row for row in record["timings"]["stages"] if row["stage"] == "t2v denoising"]
    assert len(denoising) == 1 and denoising[0]["steps"] == 2
    words = shlex.split(record["command"])
    assert words[:3] == ["python", "-m", "longcat_jax.generate"]
    assert generate.parse_request(words[3:]) == cat_job.request  # the CLI runs the same request
    assert record["request"]["seed"] == 7 and record["request"]["output_path"] == str(cat_job.video.resolve())


def test_from_json_on_an_app_sidecar_makes_the_same_video(cat_job, tmp_path, caplog):
    again = tmp_path / "again.mp4"
    with caplog.at_level(logging.INFO):
        assert generate.main(["--from-json", str(cat_job.sidecar), "--output-path", str(again)]) == 0
    assert "as recorded" in caplog.text and "differ from the sidecar" not in caplog.text
    (first, first_fps), (second, second_fps) = read_video(cat_job.video), read_video(again)
    assert np.array_equal(first, second) and first_fps == second_fps


def test_a_quantization_change_reloads_the_models(engine, builtin_loads):
    """The job is cancelled once its models are loaded (its compiles would only cost time). Last in the module: it
    leaves the engine's DiT in int8."""
    loads = engine.models.loads
    job_ids = []

    def cancel_after_loading(job: Job) -> None:
        if job.id in job_ids and job.stage is not None and job.stage.name == "text encoding":
            engine.cancel(job.id)

    engine.add_listener(cancel_after_loading)
    try:
        job = engine.submit(engine.settings.request(**SMALL, quantize="int8"))
        job_ids.append(job.id)
        wait_finished(job)
    finally:
        engine.remove_listener(cancel_after_loading)
    assert job.state is JobState.CANCELLED
    assert [done.split(" (")[0] for done in job.stages_done] == ["load models", "text encoding"]  # no denoising
    assert engine.models.loads == loads + 1 and builtin_loads[-1] == "int8"
    assert engine.models.setting.quantize == "int8"


def test_stopping_tells_the_listeners_of_the_jobs_it_drops(tmp_path):
    engine = Engine(AppSettings(model_path=None, output_dir=tmp_path, context_parallel=1))  # never started
    queued = engine.submit(engine.settings.request(**SMALL))
    seen: list[JobState] = []
    engine.add_listener(lambda job: seen.append(job.state) if job.id == queued.id else None)
    engine.stop()
    assert queued.state is JobState.CANCELLED and seen == [JobState.CANCELLED]


def test_a_failed_reload_leaves_nothing_named_as_loaded(tmp_path, monkeypatch):
    """The page's header names the loaded weights: after a reload that failed, none are."""
    settings = AppSettings(model_path=None, output_dir=tmp_path, context_parallel=1)
    models = WarmModels(None)
    models.pipeline, models.setting = object(), LoadSetting("float32", "int8")  # loaded before, in int8

    def failing(*args):
        raise InputError("the load failed")

    monkeypatch.setattr(models, "_load", failing)
    with pytest.raises(InputError, match="the load failed"):
        models.for_plan(plan_run(settings.request(**SMALL)), RunStats())
    assert models.pipeline is None and models.setting is None
    assert "not loaded yet" in header(types.SimpleNamespace(models=models))  # the header reads an engine's models
