"""`--prepare` and the data folder: good clips are encoded once, bad entries are skipped and listed, the cache
is refused when it does not fit the config."""

import json

import numpy as np
import pytest

from longcat_jax.errors import ConfigError, InputError
from longcat_jax.presets import build_tiny_models
from longcat_jax.training.cache import SKIPPED_NAME, read_clip, read_manifest, require_manifest
from longcat_jax.training.dataset import discover_clips
from longcat_jax.training.models import Encoders
from longcat_jax.training.prepare import cache_fingerprint, cover_and_crop, prepare_dataset, read_leading_frames
from tests.training.synthetic import moving_square_frames, train_config, write_clip_video


@pytest.fixture(scope="module")
def encoders():
    models = build_tiny_models()
    return Encoders(models.vae, models.text_encoder, models.tokenizer)


def test_prepare_encodes_good_clips_and_skips_and_lists_bad_ones(tmp_path, encoders):
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip_video(clips, "good", 9, "a red square moves right")
    write_clip_video(clips, "short", 3, "too short to train on")
    write_clip_video(clips, "uncaptioned", 9, None)
    (clips / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    (clips / "corrupt.txt").write_text("a file that is not a video")
    config = train_config(tmp_path, data={"folder": str(clips), "cache_dir": str(tmp_path / "cache"),
                                          "num_frames": 5, "height": 32, "width": 48})

    report = prepare_dataset(config, encoders=encoders)

    reasons = {skip.source: skip.reason for skip in report.skipped}
    assert set(reasons) == {"short.mp4", "uncaptioned.mp4", "corrupt.mp4"}
    assert "too few frames" in reasons["short.mp4"] and "unreadable video" in reasons["corrupt.mp4"]
    assert "uncaptioned.txt is missing" in reasons["uncaptioned.mp4"]
    listed = (config.cache_dir / SKIPPED_NAME).read_text()
    assert all(name in listed for name in reasons)
    manifest = read_manifest(config.cache_dir)
    assert [clip.key for clip in manifest.clips] == ["good.mp4"] and report.encoded == 1
    mean, std, text = read_clip(config.cache_dir, manifest.clips[0])
    assert mean.shape == (16, 2, 4, 6) and np.all(std > 0) and np.all(np.isfinite(mean))
    assert 0 < text.shape[0] < 64 and text.shape[1] == encoders.text_encoder.config.d_model

    again = prepare_dataset(config, encoders=None)  # nothing new to encode: no model is loaded
    assert (again.encoded, again.reused) == (0, 1)

    with pytest.raises(ConfigError, match="num_frames=5.*9.*--prepare"):
        require_manifest(config.cache_dir, {**cache_fingerprint(config), "num_frames": 9}, "train.json")
    with pytest.raises(InputError, match="--prepare"):
        require_manifest(tmp_path / "elsewhere", cache_fingerprint(config), "train.json")


def test_a_folder_without_usable_clips_is_refused_before_loading_models(tmp_path):
    (tmp_path / "clips").mkdir()
    write_clip_video(tmp_path / "clips", "only", 5, None)
    with pytest.raises(InputError, match="no usable clip.*only.txt is missing"):
        prepare_dataset(train_config(tmp_path))
    with pytest.raises(InputError, match="data folder .* not found"):
        discover_clips(tmp_path / "missing")


def test_metadata_jsonl_lists_the_clips_and_its_bad_lines_are_skipped(tmp_path):
    for name in ("a", "b"):
        write_clip_video(tmp_path, name, 5, None)
    lines = [
        {"file_name": "a.mp4", "caption": "first"},
        {"video": "b.mp4", "text": "second"},
        {"file_name": "a.mp4", "caption": "again"},
        {"file_name": "missing.mp4", "caption": "gone"},
        {"file_name": "b.mp4"},
    ]
    (tmp_path / "metadata.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n{broken\n")
    clips, skipped = discover_clips(tmp_path)
    assert [(c.key, c.caption) for c in clips] == [("a.mp4", "first"), ("b.mp4", "second")]
    reasons = [s.reason for s in skipped]
    assert len(skipped) == 4
    assert any("listed twice" in r for r in reasons) and any("not found" in r for r in reasons)
    assert any("no caption" in r for r in reasons) and any("not valid JSON" in r for r in reasons)


def test_frames_are_read_at_the_configured_rate_and_cropped_to_the_size(tmp_path):
    write_clip_video(tmp_path, "fast", 9, None, fps=30.0)
    assert read_leading_frames(tmp_path / "fast.mp4", 5, 15.0).shape == (5, 32, 48, 3)  # every 2nd frame
    with pytest.raises(InputError, match="too few frames: 5 at 15 fps"):
        read_leading_frames(tmp_path / "fast.mp4", 6, 15.0)
    assert read_leading_frames(tmp_path / "fast.mp4", 9, None).shape[0] == 9

    frames = moving_square_frames(1, height=32, width=48)
    cropped = cover_and_crop(frames, 16, 16)  # scale 0.5 -> 16x24, the middle 16 columns kept
    assert cropped.shape == (1, 16, 16, 3)
    middle = cover_and_crop(frames, 32, 32)  # no resize: the middle 32 of 48 columns
    np.testing.assert_array_equal(middle[0], frames[0][:, 8:40])
