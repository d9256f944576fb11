"""The app's engine on a checkpoint folder (the fixture models, laid out like the download): a distilled t2v job
(the checkpoint's cfg_step_lora), its DiT loaded on first use inside the job, as a checkpoint's pipeline with a
memory plan does. One job: on the CPU the fixture VAE compiles for a minute per shape (the refinement of the same
pipeline code is run by tests/pipelines and by the browser test on the built-in model)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from longcat_jax.app import views
from longcat_jax.app.engine import AppSettings, Engine
from longcat_jax.app.jobs import Job, JobState
from longcat_jax.video_io import read_video
from tests.helpers.fixture_checkpoint import link_fixture_checkpoint

TIMEOUT = 300
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, fixtures_dir) -> Path:
    """The fixture parts, a tokenizer, and the rank-8 fixture LoRA as the checkpoint's cfg_step_lora."""
    return link_fixture_checkpoint(tmp_path_factory.mktemp("checkpoint"), fixtures_dir)


@pytest.fixture(scope="module")
def engine(tmp_path_factory, checkpoint):
    engine = Engine(AppSettings(model_path=checkpoint, output_dir=tmp_path_factory.mktemp("app_checkpoint"),
                                dtype="float32", context_parallel=1))
    engine.warm_up()
    engine.start()
    yield engine
    engine.stop(timeout=TIMEOUT)


def run(engine: Engine, **fields) -> Job:
    job = engine.submit(engine.settings.request(**fields))
    deadline = time.monotonic() + TIMEOUT
    while not job.state.finished:
        assert time.monotonic() < deadline, job.state
        time.sleep(0.05)
    assert job.state is JobState.DONE, job.error
    return job


def test_a_distilled_t2v_job(engine):
    job = run(engine, task="t2v", distill=True, height=64, width=64, num_frames=5, num_inference_steps=2)
    frames, fps = read_video(job.video)
    assert frames.shape == (5, 64, 64, 3) and fps == 15.0
    assert "load DiT" in job.summary and "load models" not in job.summary  # the rest loaded by the warm-up
    assert "distilled" in views.settings_table(job)
    assert engine.models.loads == 1
