"""The app's memory plans on the built-in model (CPU) under a small `--max-device-memory`: each request is planned
as the CLI plans it; a larger one than the models were placed for loads them again with a more frugal placement
(here: VAE tiles), which then serves the smaller ones without another load; one that cannot fit is refused at
submit with the CLI's message. (The jobs here stop once their models are loaded: test_engine runs jobs through.)"""

from __future__ import annotations

import time

import jax
import pytest

from longcat_jax import generate
from longcat_jax.app.engine import AppSettings, Engine
from longcat_jax.app.jobs import Job, JobState
from longcat_jax.app.placement import covers, most_frugal
from longcat_jax.memory.plan import MemoryBudgetError, Placement
from longcat_jax.pipelines.stats import RunStats
from longcat_jax.pipelines.tasks import plan_run

# Under this budget (estimates of the built-in model, float32): the app's default video (208x128, 13 frames) does
# not fit, 64x64 runs on whole frames, 192x128 needs 128-pixel VAE tiles, and 256x256 with 13 frames fits no plan.
BUDGET = "34MiB"
SMALL = dict(task="t2v", height=64, width=64, num_frames=5, num_inference_steps=2)
LARGER = dict(task="t2v", height=192, width=128, num_frames=5, num_inference_steps=2)
TIMEOUT = 180
needs_cpu = pytest.mark.skipif(jax.default_backend() != "cpu",
                               reason="the budget is sized by the CPU's estimates (a GPU plans 256 MiB less of it)")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = Engine(AppSettings(model_path=None, output_dir=tmp_path_factory.mktemp("app_memory"), context_parallel=1,
                                max_device_memory=BUDGET))
    engine.warm_up()
    engine.start()
    yield engine
    engine.stop(timeout=TIMEOUT)


def cancelled_after_loading(engine: Engine, **fields) -> Job:
    """A job of `fields`, cancelled once its models are loaded (its compiles and decode would only cost time)."""

    def cancel_at_text_encoding(job: Job) -> None:
        if job.id == submitted.id and job.stage is not None and job.stage.name == "text encoding":
            engine.cancel(job.id)

    engine.add_listener(cancel_at_text_encoding)
    try:
        submitted = engine.submit(engine.settings.request(**fields))
        deadline = time.monotonic() + TIMEOUT
        while not submitted.state.finished:
            assert time.monotonic() < deadline, submitted.state
            time.sleep(0.02)
    finally:
        engine.remove_listener(cancel_at_text_encoding)
    assert submitted.state is JobState.CANCELLED, submitted.error
    return submitted


@needs_cpu
def test_a_larger_request_loads_the_models_again_more_frugally_and_keeps_that(engine, tmp_path):
    models = engine.models
    assert models.loads == 1 and models.placement.vae_tile is None  # the warm-up: the smallest video's plan
    larger = cancelled_after_loading(engine, **LARGER)
    assert larger.plan.memory.placement.vae_tile == 128  # its own plan, as the CLI's
    assert [done.split(" (")[0] for done in larger.stages_done] == ["load models", "text encoding"]
    assert models.loads == 2 and models.placement.vae_tile == 128
    assert models.pipeline.memory_plan.placement.vae_tile == 128

    # a small request, planned on whole frames, is served by the tiled models as they are, and says so
    pipeline, stats = models.pipeline, RunStats()
    small = plan_run(engine.settings.request(**SMALL, output_path=tmp_path / "small.mp4"))
    assert small.memory.placement.vae_tile is None
    assert models.for_plan(small, stats) is pipeline and models.loads == 2
    assert not stats.stages and "served by the models as loaded" in stats.summary()


@needs_cpu
def test_a_request_no_plan_fits_is_refused_with_the_cli_message(engine):
    before = len(engine.jobs())
    with pytest.raises(MemoryBudgetError) as cli:
        plan_run(generate.parse_request(["--height", "256", "--width", "256", "--num-frames", "13",
                                         "--max-device-memory", BUDGET, "--context-parallel", "1"]))
    with pytest.raises(MemoryBudgetError) as app:
        engine.submit(engine.settings.request(task="t2v", height=256, width=256, num_frames=13))
    assert str(app.value) == str(cli.value)
    assert "--max-device-memory" in str(app.value)
    assert len(engine.jobs()) == before


@pytest.mark.parametrize(("loaded", "wanted", "served"), [
    (Placement(), Placement(), True),
    (Placement(vae_tile=128), Placement(), True),
    (Placement(), Placement(vae_tile=128), False),
    (Placement(vae_tile=256), Placement(vae_tile=128), False),
    (Placement(dit_streamed=True, chunk_tokens=8192), Placement(chunk_tokens=32768), True),
    (Placement(chunk_tokens=32768), Placement(dit_streamed=True), False),
    (Placement(text_on_cpu=True), Placement(text_on_cpu=False, vae_tile=512), False),
])
def test_covers(loaded, wanted, served):
    assert covers(loaded, wanted) is served
    both = most_frugal(loaded, wanted)
    assert covers(both, loaded) and covers(both, wanted)


def test_most_frugal_takes_each_part_from_either():
    both = most_frugal(Placement(dit_streamed=True, vae_tile=256), Placement(text_on_cpu=True, chunk_tokens=8192,
                                                                              vae_tile=384))
    assert both == Placement(text_on_cpu=True, dit_streamed=True, chunk_tokens=8192, vae_tile=256)
