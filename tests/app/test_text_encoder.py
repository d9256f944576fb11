"""The warm pipeline's text encoder between jobs, on the built-in model (CPU): under a budget whose plan has no room
for it beside the DiT and VAE stages it is released after each job's encoding (as the CLI releases it) and loads
again for the next new prompt, which makes the video the CLI makes; the same prompts again reuse their embeddings.
(`app.text_encoder`; without a budget it stays loaded: test_engine; a checkpoint's encoder loaded again:
test_checkpoint.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longcat_jax import generate
from longcat_jax.app.engine import AppSettings, Engine
from longcat_jax.app.jobs import Job
from longcat_jax.app.text_encoder import TEXT_STAGE, WarmTextEncoder, room_for_text_encoder
from longcat_jax.memory.footprint import text_encoder_weights
from longcat_jax.memory.plan import MemoryPlan
from longcat_jax.models.text_encoder.prompt import is_released
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.stats import RunStats
from longcat_jax.pipelines.tasks import RunPlan, plan_run
from longcat_jax.presets import TINY_TEXT_CONFIG
from longcat_jax.sharding import make_mesh, shard_pipeline
from longcat_jax.video_io import read_video
from tests.helpers.app_jobs import run_job

SMALL = dict(task="t2v", height=64, width=64, num_frames=5, num_inference_steps=2)
TIMEOUT = 120
RELEASED = "text encoder: released after encoding (the plan needs its memory for the DiT)"


def tight_budget(memory: MemoryPlan) -> int:
    """A budget (bytes) with half the text encoder's weights to spare beside the largest stage after the text
    encoding of plan `memory`: the same stages fit it, and there is no room to keep the encoder."""
    largest = max(stage.device_bytes for stage in memory.stages if stage.name != TEXT_STAGE)
    return memory.budget.needed_for(largest + text_encoder_weights(TINY_TEXT_CONFIG, jnp.float32) // 2)


def small_plan(output_dir: Path, context_parallel: int = 1) -> RunPlan:
    """SMALL planned without a budget (the fastest placement)."""
    return plan_run(AppSettings(model_path=None, output_dir=output_dir, context_parallel=context_parallel).request(**SMALL))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("app_text_encoder")
    engine = Engine(AppSettings(model_path=None, output_dir=output_dir, context_parallel=1,
                                max_device_memory=f"{tight_budget(small_plan(output_dir).memory)}B"))
    engine.warm_up()
    engine.start()
    yield engine
    engine.stop(timeout=TIMEOUT)


def run(engine: Engine, **fields) -> Job:
    return run_job(engine, TIMEOUT, **SMALL, **fields)


def test_the_plan_of_the_tight_budget_has_no_room_and_one_without_a_budget_has(engine, tmp_path):
    pipe, loaded = engine.models.pipeline, engine.models.placement
    tight = plan_run(engine.settings.request(**SMALL, output_path=tmp_path / "a.mp4")).memory
    free = plan_run(engine.settings.request(**SMALL, output_path=tmp_path / "b.mp4", max_device_memory=None)).memory
    assert tight.placement == free.placement  # the same placement: only the room for the encoder differs
    keeps, counted = room_for_text_encoder(tight, loaded, pipe)
    assert not keeps and "would pass" in counted
    keeps, counted = room_for_text_encoder(free, loaded, pipe)
    assert keeps and "fit the" in counted
    assert room_for_text_encoder(None, loaded, pipe) == (True, None)  # no plan: nothing to count


def test_released_after_each_job_and_loaded_again_for_a_new_prompt(engine, tmp_path):
    loads = engine.models.loads
    first = run(engine, prompt="a red ball", seed=3)
    pipe = engine.models.pipeline
    assert is_released(pipe.text_encoder)  # after the job too: the DiT and VAE stages had its memory
    assert RELEASED in first.summary and "load text encoder" not in first.summary

    second = run(engine, prompt="a blue cube", seed=4)
    assert engine.models.pipeline is pipe and engine.models.loads == loads  # the text encoder alone loaded again
    assert [done.split(" (")[0] for done in second.stages_done][:2] == ["load text encoder", "text encoding"]
    assert "loaded again for this job's new prompts" in second.summary and RELEASED in second.summary
    assert is_released(pipe.text_encoder)

    # the CLI's run of the same request (a fresh pipeline, its encoder released before the DiT runs): the same video
    again = tmp_path / "again.mp4"
    assert generate.main(["--from-json", str(second.sidecar), "--output-path", str(again)]) == 0
    (app_frames, app_fps), (cli_frames, cli_fps) = read_video(second.video), read_video(again)
    assert np.array_equal(app_frames, cli_frames) and app_fps == cli_fps

    # the same prompt again: its embeddings are reused, and the encoder stays released
    third = run(engine, prompt="a blue cube", seed=5)
    stages = [done.split(" (")[0] for done in third.stages_done]
    assert "load text encoder" not in stages and "text encoding" not in stages
    assert "this job's prompts were encoded for the previous job" in third.summary
    assert is_released(pipe.text_encoder)


def test_loaded_again_onto_the_device_mesh(tmp_path):
    """With --context-parallel the encoder loads again onto the mesh, as `shard_pipeline` put it (replicated), and
    encodes as before. The tight plan here is the request's own with the budget of `tight_budget`."""
    roomy = small_plan(tmp_path, context_parallel=2)
    budget = dataclasses.replace(roomy.memory.budget, bytes=tight_budget(roomy.memory))
    tight = dataclasses.replace(roomy, memory=dataclasses.replace(roomy.memory, budget=budget))
    pipe = LongCatPipeline.builtin(memory_plan=roomy.memory)
    shard_pipeline(pipe, make_mesh(2))
    pipe.stats, text = RunStats(), WarmTextEncoder()
    text.prepare(pipe, tight, None, pipe.stats)
    assert is_released(pipe.text_encoder)
    negative = pipe.defaults.negative_prompt
    before = np.asarray(pipe.encode_text(roomy.setup.prompt, negative).embeddings)

    text.prepare(pipe, dataclasses.replace(roomy, setup=dataclasses.replace(roomy.setup, prompt="another")), None,
                 pipe.stats)
    assert not is_released(pipe.text_encoder)  # loaded again, and kept: the roomy plan has room for it
    mesh_devices = set(pipe.mesh.devices.flat)
    assert all(leaf.sharding.device_set == mesh_devices for leaf in jax.tree.leaves(nnx.state(pipe.text_encoder)))
    pipe.clear_text_cache()
    assert np.array_equal(np.asarray(pipe.encode_text(roomy.setup.prompt, negative).embeddings), before)


def test_a_long_videos_segment_prompts_are_encoded_before_the_release(tmp_path):
    """The warm app encodes what the CLI does (`tasks.text_encodings`): a long video's segment prompts too, so its
    continuations find them after the encoder is released."""
    fields = dict(SMALL, task="long", num_cond_frames=1, segment_prompts=("it turns", "it stops"))
    roomy = plan_run(AppSettings(model_path=None, output_dir=tmp_path, context_parallel=1).request(**fields))
    budget = dataclasses.replace(roomy.memory.budget, bytes=tight_budget(roomy.memory))
    tight = dataclasses.replace(roomy, memory=dataclasses.replace(roomy.memory, budget=budget))
    pipe = LongCatPipeline.builtin(memory_plan=roomy.memory)
    pipe.stats, text = RunStats(), WarmTextEncoder()
    text.prepare(pipe, tight, None, pipe.stats)
    assert is_released(pipe.text_encoder)
    for prompt in ("it turns", "it stops"):
        pipe.encode_text(prompt, pipe.defaults.negative_prompt)  # cached: the released encoder is not needed
