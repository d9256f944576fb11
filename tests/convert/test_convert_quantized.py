"""`python -m convert --quantize`: a quantized DiT that reloads, and the refusals around it."""

import jax.numpy as jnp
import numpy as np
import pytest

from convert.__main__ import main as convert_main
from longcat_jax.checkpoint.orbax_chunks import iter_part, read_index
from longcat_jax.errors import CheckpointError, ConfigError
from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit import load_dit
from longcat_jax.models.dit.calibration_inputs import random_calibration
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.quantized_linear import QuantizedLinear


@pytest.fixture(scope="module")
def quantized_int8(fixtures_dir, tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    (src / "dit").symlink_to(fixtures_dir / "dit", target_is_directory=True)
    dst = tmp_path_factory.mktemp("dst") / "converted"
    assert convert_main([str(src), str(dst), "--quiet", "--allow-incomplete", "--quantize", "int8"]) == 0
    return fixtures_dir / "dit", dst / "dit"


def test_int8_conversion_reloads_as_the_model_quantized_while_loading(quantized_int8):
    original, converted = quantized_int8
    from_converted = load_dit(converted, dtype=jnp.float32, quantize="int8")
    while_loading = load_dit(original, dtype=jnp.float32, quantize="int8")
    qkv_converted = from_converted.blocks[0].attn.qkv
    assert isinstance(qkv_converted, QuantizedLinear)
    assert qkv_converted.qkernel.get_value().dtype == jnp.int8
    np.testing.assert_array_equal(qkv_converted.qkernel.get_value(), while_loading.blocks[0].attn.qkv.qkernel.get_value())
    bf16_kernel = load_dit(original, dtype=jnp.float32).blocks[0].attn.qkv.kernel.get_value()
    assert rel_l2(qkv_converted.dequantized_kernel(), bf16_kernel) < 1e-2


def test_the_progress_total_counts_what_the_quantized_stream_writes(fixtures_dir, tmp_path):
    from convert.api import _plan

    (tmp_path / "dit").symlink_to(fixtures_dir / "dit", target_is_directory=True)
    for quantize in (None, "int8"):
        (job,) = _plan(tmp_path, quantize)
        assert sum(1 for _ in job.tensors) == job.count, quantize


def test_quantized_checkpoint_refuses_a_mismatched_mode(quantized_int8):
    _, converted = quantized_int8
    with pytest.raises(ConfigError, match="int8 weights.*--quantize int8"):
        load_dit(converted, dtype=jnp.float32)
    with pytest.raises(ConfigError, match="--quantize int8"):
        load_dit(converted, dtype=jnp.float32, quantize="fp8")


def test_unknown_quantize_mode_is_refused_before_reading(tmp_path, capsys):
    with pytest.raises(SystemExit):
        convert_main([str(tmp_path), str(tmp_path / "out"), "--quantize", "int4"])
    assert "invalid choice" in capsys.readouterr().err


def test_resume_with_another_quantize_mode_names_both_modes(fixtures_dir, tmp_path):
    from convert import destination

    src = tmp_path / "src"
    src.mkdir()
    (src / "dit").symlink_to(fixtures_dir / "dit", target_is_directory=True)
    dst = tmp_path / "dst"
    fingerprint = destination.source_fingerprint(src, ["dit"])
    destination.prepare(dst, src, fingerprint, resume=False, settings={"quantize": "int8"})
    (dst / "dit.partial").mkdir()  # an unfinished conversion of ours
    with pytest.raises(CheckpointError, match=r"begun with \{'quantize': 'int8'\}.*asks for \{'quantize': 'fp8'\}"):
        destination.prepare(dst, src, fingerprint, resume=True, settings={"quantize": "fp8"})
    destination.prepare(dst, src, fingerprint, resume=True, settings={"quantize": "int8"})  # the same: resumes


def test_resume_refuses_a_calibration_file_rewritten_since(fixtures_dir, tmp_path):
    import os

    from convert import destination
    from convert.api import _settings

    src = tmp_path / "src"
    src.mkdir()
    (src / "dit").symlink_to(fixtures_dir / "dit", target_is_directory=True)
    dst, recorded = tmp_path / "dst", tmp_path / "calls.npz"
    recorded.write_bytes(b"first recording")
    fingerprint = destination.source_fingerprint(src, ["dit"])
    begun = _settings("int8", str(recorded))
    destination.prepare(dst, src, fingerprint, resume=False, settings=begun)
    (dst / "dit.partial").mkdir()  # an unfinished conversion of ours
    destination.prepare(dst, src, fingerprint, resume=True, settings=_settings("int8", str(recorded)))  # unchanged
    recorded.write_bytes(b"another recording, same path")
    os.utime(recorded, ns=(1, 1))
    with pytest.raises(CheckpointError, match="cannot resume: .*calls.npz .*bytes, modified"):
        destination.prepare(dst, src, fingerprint, resume=True, settings=_settings("int8", str(recorded)))
    assert _settings("int8", "random") == {"quantize": "int8", "calibration": "random"}
    inputs = random_calibration(DiTConfig.from_json(fixtures_dir / "dit" / "config.json"), (2, 8, 8), calls=1,
                                text_tokens=8)  # in memory: named by its source, as before
    assert _settings("int8", inputs) == {"quantize": "int8", "calibration": inputs.source}


def test_calibrated_int8_conversion_keeps_the_scales_and_changes_the_rounding(quantized_int8, tmp_path, capsys):
    """... and --quiet hides GPTQ's progress bar too."""
    original, nearest = quantized_int8
    src = tmp_path / "src"
    src.mkdir()
    (src / "dit").symlink_to(original, target_is_directory=True)
    dst = tmp_path / "gptq"
    calls = tmp_path / "calls.npz"  # fewer, smaller calls than `--calibration random`'s, which are sized for 4096 wide
    random_calibration(DiTConfig.from_json(original / "config.json"), (2, 8, 8), calls=4, text_tokens=64).save(calls)
    assert convert_main([str(src), str(dst), "--quiet", "--allow-incomplete", "--quantize", "int8",
                         "--calibration", str(calls)]) == 0
    assert "block" not in capsys.readouterr().err  # the GPTQ bar counts blocks
    gptq = load_dit(dst / "dit", dtype=jnp.float32, quantize="int8")
    rounded = load_dit(nearest, dtype=jnp.float32, quantize="int8")
    for block in (0, 1):
        ours, theirs = gptq.blocks[block].ffn.w2, rounded.blocks[block].ffn.w2
        np.testing.assert_array_equal(ours.qscale.get_value(), theirs.qscale.get_value())
        assert not np.array_equal(ours.qkernel.get_value(), theirs.qkernel.get_value())


def test_calibration_is_refused_without_a_mode_or_with_a_missing_file(fixtures_dir, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "dit").symlink_to(fixtures_dir / "dit", target_is_directory=True)
    with pytest.raises(SystemExit):
        convert_main([str(src), str(tmp_path / "out"), "--calibration", "random"])
    assert "pass --quantize int8 or fp8" in capsys.readouterr().err
    assert convert_main([str(src), str(tmp_path / "out"), "--allow-incomplete", "--quantize", "int8",
                         "--calibration", str(tmp_path / "calls.npz")]) == 1
    assert "calls.npz does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    calls = random_calibration(DiTConfig.from_json(fixtures_dir / "dit" / "config.json"), (2, 8, 8), calls=1,
                               text_tokens=8)
    narrow = tmp_path / "narrow.npz"  # text of another width than this DiT's caption_channels
    type(calls)(calls.latents, calls.timestep, calls.text[..., :32], calls.text_mask).save(narrow)
    assert convert_main([str(src), str(tmp_path / "out"), "--allow-incomplete", "--quantize", "int8",
                         "--calibration", str(narrow)]) == 1
    assert "caption_channels is 64" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_resumed_gptq_conversion_takes_the_finished_blocks_as_written(fixtures_dir, tmp_path, monkeypatch):
    """Only the unfinished block is rounded again; the finished ones run forward on their stored kernels to give it
    its inputs, so the result is the uninterrupted conversion's."""
    from longcat_jax.checkpoint import orbax_chunks
    from longcat_jax.models.dit import calibration
    from longcat_jax.quantization.policy import QUANTIZED_BLOCK_LINEARS

    src = tmp_path / "src"
    src.mkdir()
    (src / "dit").symlink_to(fixtures_dir / "dit", target_is_directory=True)
    calls = tmp_path / "calls.npz"
    random_calibration(DiTConfig.from_json(fixtures_dir / "dit" / "config.json"), (2, 8, 8), calls=1,
                       text_tokens=8).save(calls)
    args = ["-q", "--allow-incomplete", "--quantize", "int8", "--calibration", str(calls)]
    assert convert_main([str(src), str(tmp_path / "whole"), *args]) == 0
    whole = list(iter_part(tmp_path / "whole" / "dit"))
    last_save = 1 + max(entry["chunk"] for entry in read_index(tmp_path / "whole" / "dit"))  # the last block's
    saves, rounded = [], []
    real_save, real_round = orbax_chunks._save_chunk, calibration.gptq_quantize_kernel

    def save(*a):
        saves.append(1)
        if len(saves) == last_save:
            raise KeyboardInterrupt
        real_save(*a)

    def round_kernel(*a, **k):
        rounded.append(1)
        return real_round(*a, **k)

    monkeypatch.setattr(orbax_chunks, "_save_chunk", save)
    monkeypatch.setattr(calibration, "gptq_quantize_kernel", round_kernel)
    assert convert_main([str(src), str(tmp_path / "dst"), *args]) == 130
    rounded.clear()
    assert convert_main([str(src), str(tmp_path / "dst"), *args, "--resume"]) == 0
    assert len(rounded) == len(QUANTIZED_BLOCK_LINEARS)  # the last block's kernels only
    resumed = list(iter_part(tmp_path / "dst" / "dit"))
    assert [path for path, _ in resumed] == [path for path, _ in whole]
    for (path, a), (_, b) in zip(resumed, whole, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=str(path))
