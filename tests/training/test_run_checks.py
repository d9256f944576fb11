"""What a run refuses before the DiT loads (BSA the Pallas kernels cannot run, a checkpoint past 'training.steps',
a data folder the prepared cache no longer describes), and what `--resume` warns about (settings the data order or a
decaying learning-rate schedule follow from, re-captioned clips)."""

import dataclasses
import logging

import jax.numpy as jnp
import pytest

from longcat_jax.errors import CheckpointError, ConfigError, InputError
from longcat_jax.training import cache, loop
from longcat_jax.training.checkpoints import TrainCheckpoints
from longcat_jax.training.prepare import cache_fingerprint
from longcat_jax.training.shapes import num_cond_latents
from tests.training.synthetic import small_dit, smooth_clip, train_config, write_cache

FACTORS = {"a": jnp.arange(3.0)}
OPT_STATE = {"m": jnp.ones(3)}


@pytest.fixture
def no_model_loads(monkeypatch):
    """Makes loading (or preparing) a DiT fail the test: the checks must refuse before it."""

    def loaded(*args, **kwargs):
        raise AssertionError("the DiT was loaded before the config was refused")

    monkeypatch.setattr(loop, "load_base_dit", loaded)
    monkeypatch.setattr(loop, "prepare_base_dit", loaded)


def test_bsa_the_pallas_kernels_cannot_run_is_refused_before_the_dit_loads(tmp_path, no_model_loads):
    chunk = [1, 2, 2]  # 4-token chunks: the Pallas kernels need 16 or more
    config = train_config(tmp_path, bsa={"enable_bsa": True, "backend": "pallas_interpret", "bsa_params": {
        "sparsity": 0.5, "chunk_3d_shape_q": chunk, "chunk_3d_shape_k": chunk}})
    write_cache(config, {"clip.mp4": smooth_clip(0)})
    with pytest.raises(ConfigError, match=r"'pallas_interpret'.*4-token q.*chunk_3d_shape_q"):
        loop.run_training(config, dit=small_dit(hidden=128, heads=2))


def test_a_data_folder_changed_since_prepare_is_refused_before_the_dit_loads(tmp_path, no_model_loads):
    config = train_config(tmp_path)
    write_cache(config, {"clip.mp4": smooth_clip(0), "other.mp4": smooth_clip(1)})
    (config.data.folder / "new.mp4").write_bytes(b"a clip added after --prepare")
    (config.data.folder / "new.txt").write_text("a new caption")
    with pytest.raises(InputError, match=r"new.mp4 \(new\); run `python -m longcat_jax.train --config train.json "
                                         r"--prepare` again \(unchanged clips are reused\)"):
        loop.run_training(config)

    elsewhere = train_config(tmp_path, data={**_data(config), "folder": str(tmp_path / "elsewhere")})
    with pytest.raises(InputError, match=r"data folder .*elsewhere not found; set 'data.folder'"):
        loop.run_training(elsewhere)
    write_cache(train_config(tmp_path / "b", data={**_data(config), "folder": str(tmp_path / "elsewhere"),
                                                   "cache_dir": str(tmp_path / "b_cache")}),
                {"third.mp4": smooth_clip(2)})
    with pytest.raises(InputError, match=r"clip.mp4 \(gone or no longer usable\), other.mp4 \(gone or no longer "
                                         r"usable\), third.mp4 \(new\)"):
        loop.run_training(elsewhere)  # another data folder pointed at the same cache


def _data(config) -> dict:
    return {"folder": str(config.data.folder), "cache_dir": str(config.cache_dir), "num_frames": config.data.num_frames}


def test_a_missing_model_folder_is_named_as_the_configs_model_path(tmp_path, no_model_loads):
    config = train_config(tmp_path, model_path=str(tmp_path / "LongCat-Video"))
    write_cache(config, {"clip.mp4": smooth_clip(0)})
    with pytest.raises(CheckpointError, match=r"LongCat-Video not found; set 'model_path' in the config") as caught:
        loop.run_training(config)
    assert "--model-path" not in str(caught.value)  # the train command has no such option


def _checkpoint_at(config, step: int, meta: dict) -> None:
    checkpoints = TrainCheckpoints(config.output_dir, keep=3)
    checkpoints.save(step, FACTORS, OPT_STATE, meta)
    checkpoints.close()


def test_resuming_with_fewer_steps_than_the_checkpoint_is_refused_before_the_dit_loads(tmp_path, no_model_loads):
    # It would write the final lora.safetensors labelled step 4 with the factors of step 6.
    config = train_config(tmp_path, training={"steps": 4, "seed": 3})
    write_cache(config, {"clip.mp4": smooth_clip(0)})
    _checkpoint_at(config, 6, {})
    with pytest.raises(CheckpointError, match=r"up to step 6, past 'training.steps' 4; set 'training.steps' to 6 or "
                                              r"more .* or set 'output_dir' to a new folder"):
        loop.run_training(config, resume=True)


def _meta(config, manifest) -> dict:
    return loop._run_meta(config, manifest, num_cond_latents(config))


def _resume_warnings(tmp_path, caplog, saved: dict, resumed: dict, *, old_checkpoint: bool = False) -> list[str]:
    """The warnings of restoring a step-4 checkpoint of a run with `training` settings `saved` into a run with
    `resumed` (a checkpoint from before the meta held them with `old_checkpoint`)."""
    saved_config = train_config(tmp_path, training=saved["training"], optimizer=saved.get("optimizer", {}))
    config = train_config(tmp_path, training=resumed["training"], optimizer=resumed.get("optimizer", {}))
    manifest = write_cache(config, {"clip.mp4": smooth_clip(0)})
    saved_meta = _meta(saved_config, manifest)
    if old_checkpoint:
        del saved_meta["training"], saved_meta["schedule"]
    _checkpoint_at(config, 4, saved_meta)
    checkpoints = TrainCheckpoints(config.output_dir, keep=3)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="longcat_jax.training.checkpoints"):
        factors, opt_state = checkpoints.restore(4, FACTORS, OPT_STATE, _meta(config, manifest))
    checkpoints.close()
    assert (factors["a"] == FACTORS["a"]).all() and (opt_state["m"] == OPT_STATE["m"]).all()
    return [record.getMessage() for record in caplog.records]


SAVED = {"steps": 8, "batch_size": 1, "grad_accumulation": 1, "seed": 3}


def test_resume_warns_about_a_changed_data_order_naming_old_and_new_values(tmp_path, caplog):
    assert _resume_warnings(tmp_path / "same", caplog, {"training": SAVED}, {"training": SAVED}) == []
    changed = {**SAVED, "batch_size": 2, "grad_accumulation": 2, "seed": 99}
    (warning,) = _resume_warnings(tmp_path / "changed", caplog, {"training": SAVED}, {"training": changed})
    assert ("'training.seed' 99 (was 3), 'training.batch_size' 2 (was 1), 'training.grad_accumulation' 2 (was 1)"
            in warning), warning
    assert "repeat or skip clips" in warning and "checkpoint's values" in warning
    # A checkpoint written before the meta recorded these settings resumes without a warning.
    assert _resume_warnings(tmp_path / "old", caplog, {"training": SAVED}, {"training": changed},
                            old_checkpoint=True) == []


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_resume_warns_that_more_steps_reshape_a_decaying_schedule(tmp_path, caplog, schedule):
    optimizer = {"schedule": schedule}
    (warning,) = _resume_warnings(tmp_path, caplog, {"training": SAVED, "optimizer": optimizer},
                                  {"training": {**SAVED, "steps": 20}, "optimizer": optimizer})
    assert f"'training.steps' 20 (was 8): the {schedule} learning-rate schedule" in warning, warning
    assert "reshaped from step 4" in warning and "resume with 'training.steps' 8 to keep it" in warning


def test_more_steps_on_a_constant_schedule_resume_without_a_warning(tmp_path, caplog):
    # Training longer at a constant rate (with or without warm-up): the rate of every step stays as it was.
    optimizer = {"schedule": "constant", "warmup_steps": 2}
    assert _resume_warnings(tmp_path, caplog, {"training": SAVED, "optimizer": optimizer},
                            {"training": {**SAVED, "steps": 20}, "optimizer": optimizer}) == []


def test_resume_warns_that_a_clip_was_recaptioned(tmp_path, caplog):
    config = train_config(tmp_path, training=SAVED)
    manifest = write_cache(config, {"clip.mp4": smooth_clip(0)})
    _checkpoint_at(config, 4, _meta(config, manifest))
    recaptioned = dataclasses.replace(manifest, clips=(dataclasses.replace(manifest.clips[0], caption="new"),))
    checkpoints = TrainCheckpoints(config.output_dir, keep=3)
    with caplog.at_level(logging.WARNING, logger="longcat_jax.training.checkpoints"):
        checkpoints.restore(4, FACTORS, OPT_STATE, _meta(config, recaptioned))
    checkpoints.close()
    assert any("prepared data changed since checkpoint 4" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("host", [0, 1])
def test_every_host_refuses_a_cache_the_first_host_refuses(tmp_path, monkeypatch, host):
    """With several hosts the first checks the data folder and tells the others, which then refuse too (rather
    than load the DiT and fail on a host that has stopped)."""
    config = train_config(tmp_path)
    write_cache(config, {"clip.mp4": smooth_clip(0)})
    (config.data.folder / "clip.txt").write_text("a new caption")  # the folder no longer matches the cache
    told = []
    monkeypatch.setattr(cache.jax, "process_count", lambda: 2)
    monkeypatch.setattr(cache.jax, "process_index", lambda: host)
    monkeypatch.setattr(cache.multihost_utils, "broadcast_one_to_all", lambda value: told.append(value) or 1)
    message = "caption changed" if host == 0 else "the first host refused the prepared data"
    with pytest.raises(InputError, match=message):
        cache.require_manifest(config.cache_dir, cache_fingerprint(config), "train.json", config.data.folder)
    assert told == [1] if host == 0 else len(told) == 1
