"""The flow-matching Euler schedule: fixture tables, refinement / continuation variants, config refusals, the step."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from longcat_jax.errors import ConfigError
from longcat_jax.pipelines.scheduler import (
    SchedulerConfig,
    distill_sigmas,
    euler_step,
    frame_timesteps,
    make_schedule,
    noise_to_level,
    plain_sigmas,
    start_at,
    with_uniform_tail,
)


def _scheduler_cases(fixtures_dir):
    spec = json.loads((fixtures_dir / "pipeline_cases.json").read_text())["scheduler"]
    return spec, load_file(str(fixtures_dir / "pipeline_cases.safetensors"))


def test_tables_match_the_original(fixtures_dir):
    spec, expected = _scheduler_cases(fixtures_dir)
    config = SchedulerConfig.from_dict(spec["config"])
    assert spec["cases"], "fixture has no scheduler cases"
    for case in spec["cases"]:
        schedule = make_schedule(case["steps"], distill=case["use_distill"], config=config)
        for table in ("sigmas", "timesteps"):
            want = expected[f"{case['name']}.{table}"]
            got = np.asarray(getattr(schedule, table))
            np.testing.assert_array_equal(got, want, err_msg=f"{case['name']}.{table}")  # bit for bit


def test_parity_group_passes(fixtures_dir):
    pytest.importorskip("longcat_jax.parity.report")
    from longcat_jax.parity import scheduler as parity_scheduler

    results = parity_scheduler.run(fixtures_dir, "float32")
    assert results and all(r.status == "PASS" for r in results), results


def test_schedule_structure():
    for steps, distill in ((50, False), (16, True), (1, False)):
        schedule = make_schedule(steps, distill=distill)
        assert schedule.num_steps == steps
        assert schedule.sigmas.shape == (steps + 1,) and schedule.sigmas.dtype == jnp.float32
        assert float(schedule.sigmas[0]) == 1.0 and float(schedule.sigmas[-1]) == 0.0
        np.testing.assert_array_equal(schedule.timesteps, schedule.sigmas[:-1] * np.float32(1000))
        assert np.all(np.diff(np.asarray(schedule.sigmas)) < 0)
    np.testing.assert_allclose(plain_sigmas(4), [1.0, 0.667, 0.334, 0.001], rtol=1e-6)


def test_distill_table_picks_training_timesteps():
    # 50 training timesteps 1000, 980, ..., 20; 16 steps pick indices floor(k * 50 / 16).
    picks = [int(np.floor(k * 50 / 16)) for k in range(16)]
    np.testing.assert_allclose(distill_sigmas(16), [(1000 - 20 * p) / 1000 for p in picks], rtol=1e-7)
    np.testing.assert_allclose(distill_sigmas(50), np.arange(1000, 0, -20) / 1000, rtol=1e-7)


def test_refinement_starts_at_t_thresh():
    full = make_schedule(50)
    refine = start_at(full, 0.5)
    below = np.asarray(full.timesteps)[np.asarray(full.timesteps) < 500]
    np.testing.assert_array_equal(refine.timesteps, np.concatenate([[500.0], below]).astype(np.float32))
    np.testing.assert_array_equal(refine.sigmas[:-1], np.asarray(refine.timesteps) / np.float32(1000))
    assert float(refine.sigmas[-1]) == 0.0
    assert start_at(full, 0) is full
    with pytest.raises(ConfigError, match="t_thresh"):
        start_at(full, 1.5)


def test_continuation_uniform_tail():
    full = make_schedule(50)
    tail = with_uniform_tail(full)
    head = np.asarray(full.timesteps)[np.asarray(full.timesteps) > 500]
    np.testing.assert_array_equal(tail.timesteps[: len(head)], head)
    np.testing.assert_array_equal(tail.timesteps[len(head) :], np.arange(500, 0, -50, dtype=np.float32))
    assert tail.num_steps == len(head) + 10 and tail.sigmas.shape == (tail.num_steps + 1,)


def test_shift_from_config():
    shifted = make_schedule(8, config=SchedulerConfig.from_dict({"shift": 3.0}))
    s = plain_sigmas(8).astype(np.float64)
    np.testing.assert_allclose(shifted.sigmas[:-1], 3 * s / (1 + 2 * s), rtol=1e-6)


def test_load_reads_checkpoint_folder(tmp_path):
    assert SchedulerConfig.load(None) == SchedulerConfig()
    assert SchedulerConfig.load(tmp_path) == SchedulerConfig()  # no scheduler/ folder: LongCat's defaults
    (tmp_path / "scheduler").mkdir()
    config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.35", "shift": 2.0}
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    assert SchedulerConfig.load(tmp_path).shift == 2.0
    (tmp_path / "scheduler" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        SchedulerConfig.load(tmp_path)


@pytest.mark.parametrize(
    "config, key",
    [
        ({"warmup": 3}, "warmup"),
        ({"use_dynamic_shifting": True}, "use_dynamic_shifting"),
        ({"use_karras_sigmas": True}, "use_karras_sigmas"),
        ({"invert_sigmas": True}, "invert_sigmas"),
        ({"stochastic_sampling": True}, "stochastic_sampling"),
        ({"shift": 0.0}, "shift"),
        ({"shift": "3"}, "shift"),
        ({"shift_terminal": 1.0}, "shift_terminal"),
        ({"num_train_timesteps": 500}, "num_train_timesteps"),
        ({"time_shift_type": "cosine"}, "time_shift_type"),
        ({"_class_name": "DDIMScheduler"}, "_class_name"),
    ],
)
def test_config_refusals_name_the_key(config, key):
    with pytest.raises(ConfigError, match=key):
        SchedulerConfig.from_dict(config)


def test_bad_step_counts_refused():
    for steps in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="num_inference_steps"):
            make_schedule(steps)


def test_euler_walks_the_flow_path_to_the_data():
    # The original negates the DiT output before x + dt * v; a model that predicts (data - noise) exactly
    # therefore moves x_t = (1 - s) x0 + s e along the straight path and ends on x0.
    data, noise = np.random.default_rng(0).standard_normal((2, 1, 4, 3, 2, 2), dtype=np.float32)
    schedule = make_schedule(7)
    latents = noise
    step = jax.jit(euler_step)
    for i in range(schedule.num_steps):
        latents = step(latents, data - noise, schedule.sigmas[i], schedule.sigmas[i + 1])
        sigma = float(schedule.sigmas[i + 1])
        chex.assert_trees_all_close(latents, noise_to_level(data, noise, sigma), atol=1e-5)
    chex.assert_trees_all_close(latents, data, atol=1e-5)


def test_euler_step_keeps_condition_frames_and_dtype():
    latents, output = np.random.default_rng(1).standard_normal((2, 1, 4, 5, 2, 3), dtype=np.float32)
    stepped = jax.jit(euler_step, static_argnames="num_cond_latents")(latents, output, 0.8, 0.6, num_cond_latents=2)
    chex.assert_trees_all_equal(stepped[:, :, :2], latents[:, :, :2])
    chex.assert_trees_all_close(stepped[:, :, 2:], latents[:, :, 2:] + 0.2 * output[:, :, 2:], atol=1e-6)
    assert jax.jit(euler_step)(latents.astype(jnp.bfloat16), output, 0.8, 0.6).dtype == jnp.bfloat16


def test_frame_timesteps():
    per_frame = frame_timesteps(jnp.float32(750.0), batch=2, num_frames=5, num_cond_latents=1)
    np.testing.assert_array_equal(per_frame, [[0, 750, 750, 750, 750]] * 2)
    np.testing.assert_array_equal(frame_timesteps(jnp.float32(3.0), 1, 2), [[3.0, 3.0]])
