"""Aspect-ratio buckets, side multiples and frame-count rounding."""

import logging

import pytest

from longcat_jax.errors import InputError
from longcat_jax.pipelines.buckets import (
    BUCKETS_480P,
    BUCKETS_720P,
    BUCKETS_720P_SIDE64,
    bucket_table,
    check_side_multiple,
    nearest_bucket,
    num_latent_frames,
    refine_bucket,
    round_num_frames,
)


@pytest.mark.parametrize(
    "table, multiple", [(BUCKETS_480P, 16), (BUCKETS_720P, 16), (BUCKETS_720P_SIDE64, 64)]
)
def test_tables_are_consistent(table, multiple):
    for key, (height, width) in table.items():
        assert height % multiple == 0 and width % multiple == 0, key
        assert abs(float(key) - height / width) < 0.006, key  # keys are height / width to 2 decimals
    keys = [float(k) for k in table]
    assert keys == sorted(keys)


def test_nearest_bucket():
    assert nearest_bucket(480, 832, "480p") == (480, 832)
    assert nearest_bucket(1080, 1920, "480p") == (480, 832)
    assert nearest_bucket(512, 512, "720p") == (960, 960)
    assert nearest_bucket(1920, 1080, "480p") == (832, 480)
    assert refine_bucket(480, 832) == (704, 1280)  # the refinement grid 44 x 80 tokens of REFERENCE.md


def test_unknown_table_and_empty_frame_refused():
    with pytest.raises(InputError, match="1080p"):
        bucket_table("1080p")
    with pytest.raises(InputError, match="64"):
        bucket_table("480p", 64)
    with pytest.raises(InputError, match="no pixels"):
        nearest_bucket(0, 10, "480p")


def test_round_num_frames(caplog):
    with caplog.at_level(logging.WARNING):
        assert round_num_frames(93) == 93
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        assert round_num_frames(94) == 93
    assert "rounding 94 frames to 93" in caplog.text
    assert round_num_frames(92) == 93
    assert round_num_frames(96) == 97
    assert round_num_frames(0) == 1
    assert round_num_frames(1) == 1
    assert num_latent_frames(93) == 24 and num_latent_frames(1) == 1


def test_side_multiples():
    check_side_multiple(480, 832)
    check_side_multiple(704, 1280, 64)
    with pytest.raises(InputError, match="multiples of 16.*try 480x832"):
        check_side_multiple(481, 830)
    with pytest.raises(InputError, match="multiples of 64.*try 704x1280"):
        check_side_multiple(720, 1280, 64)
    with pytest.raises(InputError, match="positive"):
        check_side_multiple(0, 832)
