"""The page's fields as the CLI's request: inputs by task, seeds, zero as the default, BSA presets and custom
values, LoRA lines, and the upload checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kernels import BSAParams
from longcat_jax.app.engine import AppSettings
from longcat_jax.app.form import RANDOM_SEED_BOUND, FormValues, bsa_presets, build_request, parse_seed
from longcat_jax.app.views import size_choices
from longcat_jax.bsa_config import read_bsa_config
from longcat_jax.errors import InputError
from longcat_jax.presets import TINY_DEFAULTS
from longcat_jax.video_io import write_mp4

SETTINGS = AppSettings(model_path=None, output_dir=Path("unused"), quantize="none", context_parallel=1)


@pytest.fixture
def png(tmp_path) -> Path:
    import imageio.v3 as iio

    path = tmp_path / "first.png"
    iio.imwrite(path, np.zeros((32, 48, 3), np.uint8))
    return path


def _request(tmp_path, **fields):
    return build_request(FormValues(**fields), SETTINGS, tmp_path)


def test_only_the_inputs_the_task_reads_go_into_the_request(tmp_path, png):
    clip = write_mp4(tmp_path / "clip.mp4", np.zeros((5, 32, 32, 3), np.uint8), fps=15)
    t2v = _request(tmp_path, task="t2v", image=str(png), video=str(clip), refine_from=str(clip))
    assert (t2v.image, t2v.video, t2v.refine_from) == (None, None, None)
    i2v = _request(tmp_path, task="i2v", image=str(png), video=str(clip))
    assert (i2v.image, i2v.video) == (png, None)
    refine = _request(tmp_path, task="refine", refine_from=str(clip), image=str(png), distill=True, refine=True)
    assert (refine.refine_from, refine.image, refine.distill, refine.refine) == (clip, png, False, False)


def test_only_the_settings_the_task_reads_go_into_the_request(tmp_path, png):
    typed = dict(num_cond_frames=5, num_segments=3, resolution="720p", refine_inference_steps=7,
                 spatial_refine_only=True, num_inference_steps=9, guidance_scale=2.0, output_size="generated",
                 segment_prompts="it turns\n\n  it stops \n")
    t2v = _request(tmp_path, task="t2v", **typed)
    assert (t2v.num_cond_frames, t2v.num_segments, t2v.resolution, t2v.refine_inference_steps, t2v.spatial_refine_only,
            t2v.num_inference_steps, t2v.guidance_scale, t2v.output_size, t2v.segment_prompts) == (
        None, None, "480p", None, False, 9, 2.0, "input", ())
    assert _request(tmp_path, task="long", **typed).segment_prompts == ("it turns", "it stops")
    refined = _request(tmp_path, task="i2v", image=str(png), refine=True, **typed)
    assert (refined.resolution, refined.refine_inference_steps, refined.spatial_refine_only,
            refined.output_size) == ("720p", 7, True, "generated")
    refine = _request(tmp_path, task="refine", image=str(png), **typed)
    assert (refine.num_inference_steps, refine.guidance_scale, refine.refine_inference_steps) == (None, None, 7)


def test_the_launch_settings_and_the_page_fields_meet_in_one_request(tmp_path):
    request = _request(tmp_path, task="long", prompt="  a dog  ", negative_prompt="", size="64x96", num_frames=0,
                       num_inference_steps=3, guidance_scale=0, num_segments=2, quantize="int8",
                       loras="a.safetensors:0.5\n\n  b.safetensors \n")
    assert (request.task, request.prompt, request.negative_prompt) == ("long", "a dog", None)
    assert (request.height, request.width, request.num_frames, request.num_inference_steps) == (64, 96, None, 3)
    assert (request.guidance_scale, request.num_segments, request.quantize) == (None, 2, "int8")
    assert request.lora == ("a.safetensors:0.5", "b.safetensors")
    assert (request.model_path, request.context_parallel) == (None, 1)


def test_seeds():
    assert parse_seed("12") == 12 and parse_seed(" 7 ") == 7
    seeds = {parse_seed("random") for _ in range(8)} | {parse_seed("")}
    assert len(seeds) > 1 and all(0 <= seed < RANDOM_SEED_BOUND for seed in seeds)
    with pytest.raises(InputError, match="the seed must be an integer or 'random', got 'abc'"):
        parse_seed("abc")


def test_bsa_presets_and_custom_values_become_the_clis_bsa_config(tmp_path):
    assert {"balanced", "fast", "quality"} <= set(bsa_presets())
    assert _request(tmp_path, bsa="model default").bsa_config is None
    preset = _request(tmp_path, bsa="fast").bsa_config
    assert read_bsa_config(preset).sparsity == 0.96875
    custom = dict(bsa="custom", sparsity=0.5, cdf_threshold=None, chunk_q="2,4,4", chunk_k="4x4x4")
    path = _request(tmp_path, **custom).bsa_config
    assert read_bsa_config(path) == BSAParams(sparsity=0.5, cdf_threshold=None, chunk_3d_shape_q=(2, 4, 4),
                                              chunk_3d_shape_k=(4, 4, 4))
    assert _request(tmp_path, **custom).bsa_config == path  # one file per distinct config
    with pytest.raises(InputError, match=r"the BSA query chunk shape must be three positive integers \(t,h,w\)"):
        _request(tmp_path, **{**custom, "chunk_q": "4,4"})


def test_uploads_are_checked_before_they_are_read(tmp_path, png):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(InputError, match="notes.txt is not an image file this app reads; upload one of .png"):
        _request(tmp_path, task="i2v", image=str(text))
    with pytest.raises(InputError, match="the uploaded video gone.mp4 is gone; upload it again"):
        _request(tmp_path, task="continuation", video=str(tmp_path / "gone.mp4"))
    with pytest.raises(InputError, match=r"first.png is 0 MB; the app takes uploads up to 1e-06 MB"):
        build_request(FormValues(task="i2v", image=str(png)), SETTINGS, tmp_path, max_upload_mb=1e-6)


def test_fractions_and_unknown_tasks_are_refused(tmp_path):
    with pytest.raises(InputError, match="expected a whole number, got 4.5"):
        _request(tmp_path, num_inference_steps=4.5)
    with pytest.raises(InputError, match="unknown task 'dance'"):
        _request(tmp_path, task="dance")


def test_the_size_list_holds_the_model_default_at_its_scale():
    sizes = size_choices(TINY_DEFAULTS, "480p")
    assert (TINY_DEFAULTS.height, TINY_DEFAULTS.width) in sizes
    assert len(sizes) == len(set(sizes)) and all(h % 16 == 0 and w % 16 == 0 for h, w in sizes)
