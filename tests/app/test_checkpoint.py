"""The app's engine on a checkpoint folder (the fixture models, laid out like the download): a distilled t2v job
(the checkpoint's cfg_step_lora), its DiT loaded on first use inside the job, as a checkpoint's pipeline with a
memory plan does. One job: on the CPU the fixture VAE compiles for a minute per shape (the refinement of the same
pipeline code is run by tests/pipelines and by the browser test on the built-in model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from longcat_jax.app import views
from longcat_jax.app.engine import AppSettings, Engine
from longcat_jax.app.jobs import Job
from longcat_jax.models.text_encoder.prompt import is_released
from longcat_jax.pipelines.stats import RunStats
from longcat_jax.video_io import read_video
from tests.helpers.app_jobs import run_job
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
    return run_job(engine, TIMEOUT, **fields)


def test_a_distilled_t2v_job(engine):
    job = run(engine, task="t2v", distill=True, height=64, width=64, num_frames=5, num_inference_steps=2)
    frames, fps = read_video(job.video)
    assert frames.shape == (5, 64, 64, 3) and fps == 15.0
    assert "load DiT" in job.summary and "load models" not in job.summary  # the rest loaded by the warm-up
    assert "distilled" in views.settings_table(job)
    assert engine.models.loads == 1


def test_a_released_text_encoder_loads_again_from_the_checkpoint(engine):
    """What the app does under a budget that needs the encoder's memory for the DiT (test_text_encoder runs it on the
    built-in model): released, then loaded again from the checkpoint's text_encoder/ alone, it encodes as before.
    Last in the module: it drops the prompts the engine's pipeline holds, and tells the engine so."""
    pipe = engine.models.pipeline
    dit = pipe.dit
    before = np.asarray(pipe.encode_text("a lighthouse at dusk").embeddings)
    pipe.clear_text_cache()
    engine.models.text.forget()
    pipe.release_text_encoder()
    assert is_released(pipe.text_encoder)
    pipe.stats = stats = RunStats()
    pipe.reload_text_encoder()
    after = np.asarray(pipe.encode_text("a lighthouse at dusk").embeddings)
    assert not is_released(pipe.text_encoder) and pipe.dit is dit  # the text encoder alone loaded again
    assert [stage.name for stage in stats.stages] == ["load text encoder", "text encoding"]
    assert np.array_equal(before, after)
