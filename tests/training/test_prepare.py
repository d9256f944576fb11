"""`--prepare` and the data folder: good clips are encoded once, bad entries are skipped and listed, the cache
is refused when it does not fit the config."""

import dataclasses
import json
import logging
import os

import numpy as np
import pytest

from longcat_jax.errors import ConfigError, InputError
from longcat_jax.presets import build_tiny_models
from longcat_jax.training import prepare
from longcat_jax.training.cache import SKIPPED_NAME, read_clip, read_manifest, require_manifest, write_manifest
from longcat_jax.training.dataset import discover_clips
from longcat_jax.training.models import Encoders
from longcat_jax.training.prepare import (
    cache_fingerprint,
    cover_and_crop,
    frame_indices,
    prepare_dataset,
    read_leading_frames,
)
from tests.training.synthetic import moving_square_frames, train_config, write_clip_video


@pytest.fixture(scope="module")
def encoders():
    models = build_tiny_models()
    return Encoders(models.vae, models.text_encoder, models.tokenizer)


def test_prepare_encodes_good_clips_and_skips_and_lists_bad_ones(tmp_path, encoders, monkeypatch):
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

    # nothing new to encode: no model is loaded, and the clips skipped while encoding are not decoded again
    monkeypatch.setattr(prepare, "load_encoders", lambda config: pytest.fail("the encoders were loaded"))
    monkeypatch.setattr(prepare, "read_leading_frames", lambda *args: pytest.fail("a skipped clip was decoded again"))
    again = prepare_dataset(config, encoders=None)
    assert (again.encoded, again.reused) == (0, 1)
    assert {skip.source: skip.reason for skip in again.skipped} == reasons

    with pytest.raises(ConfigError, match="num_frames=5.*9.*--prepare"):
        require_manifest(config.cache_dir, {**cache_fingerprint(config), "num_frames": 9}, "train.json", clips)
    with pytest.raises(InputError, match="--prepare"):
        require_manifest(tmp_path / "elsewhere", cache_fingerprint(config), "train.json", clips)


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
    frames, source_fps = read_leading_frames(tmp_path / "fast.mp4", 5, 15.0)  # every 2nd frame
    assert frames.shape == (5, 32, 48, 3) and source_fps == 30.0
    with pytest.raises(InputError, match=r"too few frames: 9, needs 11 for 6 at 15 fps from its 30 fps"):
        read_leading_frames(tmp_path / "fast.mp4", 6, 15.0)
    assert read_leading_frames(tmp_path / "fast.mp4", 9, None)[0].shape[0] == 9

    frames = moving_square_frames(1, height=32, width=48)
    cropped = cover_and_crop(frames, 16, 16)  # scale 0.5 -> 16x24, the middle 16 columns kept
    assert cropped.shape == (1, 16, 16, 3)
    middle = cover_and_crop(frames, 32, 32)  # no resize: the middle 32 of 48 columns
    np.testing.assert_array_equal(middle[0], frames[0][:, 8:40])


def test_frames_are_picked_by_timestamp_and_slow_or_rateless_videos_are_refused(tmp_path):
    # Every n-th frame with n = round(source / 15) played 24 fps at 12, 20 fps at 20, 50 fps at 16.7, 8 fps at 8.
    assert frame_indices(24.0, 15.0, 5) == [0, 2, 3, 5, 6]  # 1.6 frames apart: 15 fps motion
    assert frame_indices(50.0, 15.0, 4) == [0, 3, 7, 10]
    assert frame_indices(29.97, 15.0, 4) == [0, 2, 4, 6]
    assert frame_indices(14.0, 15.0, 4) == frame_indices(16.0, 15.0, 4) == [0, 1, 2, 3]  # within 10%: as they are
    assert frame_indices(8.0, None, 3) == [0, 1, 2]  # 'data.fps' null: every frame
    with pytest.raises(InputError, match=r"8 fps, below the training rate 15 fps"):
        frame_indices(8.0, 15.0, 5)
    with pytest.raises(InputError, match=r"no frame rate.*'data.fps' to null"):
        frame_indices(0.0, 15.0, 5)

    write_clip_video(tmp_path, "cinema", 9, None, fps=24.0)
    every_frame, _ = read_leading_frames(tmp_path / "cinema.mp4", 9, None)
    frames, source_fps = read_leading_frames(tmp_path / "cinema.mp4", 5, 15.0)
    assert source_fps == 24.0
    np.testing.assert_array_equal(frames, every_frame[[0, 2, 3, 5, 6]])
    write_clip_video(tmp_path, "slow", 9, None, fps=8.0)
    with pytest.raises(InputError, match=r"8 fps, below the training rate 15 fps"):
        read_leading_frames(tmp_path / "slow.mp4", 5, 15.0)


def test_training_refuses_a_cache_the_data_folder_no_longer_matches_and_prepare_reuses_the_rest(tmp_path, encoders,
                                                                                                 caplog):
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip_video(clips, "a", 5, "first clip")
    write_clip_video(clips, "b", 5, "second clip", seed=1)
    write_clip_video(clips, "short", 3, "too short")
    config = train_config(tmp_path, data={"folder": str(clips), "cache_dir": str(tmp_path / "cache"),
                                          "num_frames": 5, "height": 32, "width": 48})
    prepare_dataset(config, encoders=encoders)

    def check():
        return require_manifest(config.cache_dir, cache_fingerprint(config), "train.json", clips)

    assert [clip.key for clip in check().clips] == ["a.mp4", "b.mp4"]
    write_clip_video(clips, "short", 9, "too short")  # long enough now (skipped at prepare: its stamp is kept)
    (clips / "a.txt").write_text("first clip, re-captioned")
    write_clip_video(clips, "c", 5, "third clip")
    (clips / "b.txt").unlink()
    with pytest.raises(InputError, match=r"data folder .*clips: a.mp4 \(caption changed\), b.mp4 \(gone or no "
                                         r"longer usable\), c.mp4 \(new\), short.mp4 \(video file changed\); run "
                                         r"`.*--prepare` again \(unchanged clips are reused\)"):
        check()
    with pytest.raises(InputError, match="data folder .*missing not found"):
        require_manifest(config.cache_dir, cache_fingerprint(config), "train.json", tmp_path / "missing")

    report = prepare_dataset(config, encoders=encoders)
    assert (report.encoded, report.reused) == (3, 0) and report.skipped[0].source == "b.mp4"
    assert [clip.key for clip in check().clips] == ["a.mp4", "c.mp4", "short.mp4"]
    os.utime(clips / "c.mp4", ns=(1, 1))  # the same size, another time: a copy that did not keep the times
    with caplog.at_level(logging.WARNING):
        check()
    assert "1 clip(s) of" in caplog.text and "other modification times than when prepared (c.mp4)" in caplog.text
    report = prepare_dataset(config, encoders=encoders)  # takes the new time on, encoding nothing
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check()
    assert (report.encoded, report.reused) == (0, 3) and "other modification times" not in caplog.text
    write_clip_video(clips, "c", 7, "third clip")  # another size: another video
    with pytest.raises(InputError, match=r"c.mp4 \(video file changed\)"):
        check()


def test_a_cache_of_the_version_before_timestamps_is_refused_and_prepare_keeps_the_clips_it_read_right(tmp_path,
                                                                                                        encoders):
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip_video(clips, "thirty", 9, "30 fps: every 2nd frame either way", fps=30.0)
    write_clip_video(clips, "cinema", 9, "24 fps: every 2nd frame was 12 fps", fps=24.0)
    config = train_config(tmp_path, data={"folder": str(clips), "cache_dir": str(tmp_path / "cache"),
                                          "num_frames": 5, "height": 32, "width": 48})
    prepare_dataset(config, encoders=encoders)
    manifest = read_manifest(config.cache_dir)  # as the earlier version wrote it: no frame rates
    write_manifest(config.cache_dir, dataclasses.replace(
        manifest, clips=tuple(dataclasses.replace(c, source_fps=None) for c in manifest.clips)))
    with pytest.raises(InputError, match=r"earlier version.*24 fps at 12 fps.*--prepare` again"):
        require_manifest(config.cache_dir, cache_fingerprint(config), "train.json", clips)

    report = prepare_dataset(config, encoders=encoders)
    assert (report.encoded, report.reused) == (1, 1)
    rates = {clip.key: clip.source_fps for clip in read_manifest(config.cache_dir).clips}
    assert rates == {"cinema.mp4": 24.0, "thirty.mp4": 30.0}
    require_manifest(config.cache_dir, cache_fingerprint(config), "train.json", clips)
