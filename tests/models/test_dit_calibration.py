"""GPTQ for the whole DiT (`models.dit.calibration`) on the fixture DiT, its calibration inputs and its stream checks."""

import inspect
import logging

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError, ConfigError, InputError
from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit import load_dit
from longcat_jax.models.dit.calibration import gptq_quantize_dit, gptq_tensors
from longcat_jax.models.dit.calibration_inputs import CalibrationInputs, random_calibration
from longcat_jax.models.dit.layers import Linear
from longcat_jax.models.dit.params import block_order_key, dit_tensors
from longcat_jax.models.dit.quantized_linear import QuantizedLinear
from longcat_jax.quantization import quantize_tensors

TEXT_TOKENS = 64


@pytest.fixture(scope="module")
def fixture_dit(fixtures_dir):
    return load_dit(fixtures_dir / "dit", dtype=jnp.float32)


@pytest.fixture(scope="module")
def calibration(fixture_dit):
    return random_calibration(fixture_dit.config, (2, 8, 8), calls=4, text_tokens=TEXT_TOKENS, seed=0)


def test_linear_records_its_inputs_second_moment():
    linear = Linear(6, 3, rngs=nnx.Rngs(0))
    linear.record_inputs()
    first, second = (np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
                     for seed, shape in ((0, (2, 5, 6)), (1, (7, 6))))
    nnx.jit(lambda module, x: module(x))(linear, jnp.asarray(first))
    linear(jnp.asarray(second))
    rows = np.concatenate([first.reshape(-1, 6), second]).astype(np.float64)
    np.testing.assert_allclose(np.asarray(linear.input_second_moment()), rows.T @ rows / 17, rtol=1e-5, atol=1e-6)
    linear.record_inputs(False)
    assert linear.input_moment is None


def test_gptq_dit_is_closer_to_the_float_dit_than_round_to_nearest(fixture_dit, calibration, fixtures_dir, caplog):
    with caplog.at_level(logging.WARNING):
        gptq = gptq_quantize_dit(fixture_dit, "int8", calibration)
    # 4 calls of 128 tokens and 64 text tokens: w2 (768 inputs) sees 512 rows, the text's kv (256 inputs) 256 rows, both
    # under twice their inputs; qkv (512 rows of 256 inputs) is not warned of.
    assert "cross_attn.kv (256 rows, 256 inputs), ffn.w2 (512 rows, 768 inputs)" in caplog.text
    assert "attn.qkv" not in caplog.text
    assert isinstance(gptq.blocks[1].ffn.w2, QuantizedLinear)
    nearest = load_dit(fixtures_dir / "dit", dtype=jnp.float32, quantize="int8")
    held_out = random_calibration(fixture_dit.config, (2, 8, 8), calls=1, text_tokens=TEXT_TOKENS, seed=1)
    call = [jnp.asarray(a) for a in held_out.call(0)]
    reference = fixture_dit(*call)
    gptq_error, nearest_error = rel_l2(gptq(*call), reference), rel_l2(nearest(*call), reference)
    # Measured 2026-12-05 (CPU, these shapes, two held-out calls): round to nearest 1.51e-4 / 1.53e-4, GPTQ
    # 3.74e-5 / 3.80e-5 (4.0x lower); the bound leaves room for other BLAS orders.
    assert gptq_error < nearest_error / 2.5, (gptq_error, nearest_error)


def test_stream_has_the_layout_and_scales_of_round_to_nearest(fixture_dit, calibration, fixtures_dir):
    ckpt = SafetensorsCheckpoint(fixtures_dir / "dit")
    gptq = dict(gptq_tensors(dit_tensors(ckpt, fixture_dit.config, block_order=True), fixture_dit.config, "int8",
                             calibration, dtype=jnp.float32, progress=False))
    nearest = dict(quantize_tensors(dit_tensors(ckpt, fixture_dit.config), "int8"))
    assert gptq.keys() == nearest.keys()
    changed = 0
    for path, array in nearest.items():
        assert gptq[path].dtype == array.dtype and gptq[path].shape == array.shape, path
        if path[-1] == "qkernel":
            changed += int(not np.array_equal(gptq[path], array))
        else:
            np.testing.assert_array_equal(gptq[path], array, err_msg=str(path))  # scales and unquantized tensors
    assert changed == 16  # every quantized kernel of the 2 blocks is rounded differently


def test_default_random_calibration_gives_every_real_linear_twice_its_inputs_in_rows():
    from longcat_jax.models.dit.calibration import ROWS_PER_INPUT
    from longcat_jax.models.dit.config import DiTConfig

    config = DiTConfig()  # the released model's sizes
    calls = inspect.signature(random_calibration).parameters["calls"].default
    inputs = random_calibration(config, calls=1)  # one call has the default's shapes
    grid = [a // p for a, p in zip(inputs.latents.shape[2:], config.patch_size, strict=True)]
    video_rows, text_rows = calls * int(np.prod(grid)), calls * inputs.text.shape[2]
    assert video_rows >= ROWS_PER_INPUT * config.ffn_hidden_size  # w2, the widest input
    assert text_rows >= ROWS_PER_INPUT * config.hidden_size  # the text's kv


def test_block_order_puts_the_other_layers_first_then_blocks_in_order(fixtures_dir, fixture_dit):
    paths = [path for path, _ in dit_tensors(SafetensorsCheckpoint(fixtures_dir / "dit"), fixture_dit.config,
                                             block_order=True)]
    keys = [block_order_key(path) for path in paths]
    assert keys == sorted(keys) and keys[0] == (0, 0) and keys[-1] == (1, 1)


def test_stream_out_of_order_or_without_a_mode_is_refused(fixture_dit, calibration, fixtures_dir):
    ckpt = SafetensorsCheckpoint(fixtures_dir / "dit")
    ordered = list(dit_tensors(ckpt, fixture_dit.config, block_order=True))
    blocks = [entry for entry in ordered if entry[0][0] == "blocks"]
    swapped = ([e for e in ordered if e[0][0] != "blocks"] + [e for e in blocks if e[0][1] == 1]
               + [e for e in blocks if e[0][1] == 0])
    with pytest.raises(CheckpointError, match="from block 0 on"):
        list(gptq_tensors(swapped, fixture_dit.config, "int8", calibration, progress=False))
    with pytest.raises(ConfigError, match="choose a quantize mode"):
        list(gptq_tensors(ordered, fixture_dit.config, "none", calibration, progress=False))


def test_calibration_inputs_round_trip_and_refusals(tmp_path, fixture_dit, calibration):
    path = tmp_path / "calls.npz"
    calibration.save(path)
    loaded = CalibrationInputs.load(path)
    for name in ("latents", "timestep", "text", "text_mask"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(calibration, name))
    loaded.check_fits(fixture_dit.config)
    np.savez(tmp_path / "partial.npz", latents=calibration.latents)
    with pytest.raises(InputError, match=r"lacks \['timestep', 'text', 'text_mask'\]"):
        CalibrationInputs.load(tmp_path / "partial.npz")
    with pytest.raises(InputError, match="does not exist"):
        CalibrationInputs.load(tmp_path / "missing.npz")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file")
    with pytest.raises(InputError, match="not a readable .npz"):
        CalibrationInputs.load(tmp_path / "garbage.npz")
    wide = CalibrationInputs(calibration.latents, calibration.timestep, np.zeros((4, 1, TEXT_TOKENS, 32), np.float32),
                             calibration.text_mask)
    with pytest.raises(InputError, match="caption_channels is 64"):
        wide.check_fits(fixture_dit.config)
    with pytest.raises(InputError, match="NaN"):
        CalibrationInputs(calibration.latents * np.nan, calibration.timestep, calibration.text, calibration.text_mask)
    with pytest.raises(InputError, match="0..1000"):
        CalibrationInputs(calibration.latents, calibration.timestep * 10, calibration.text, calibration.text_mask)
    with pytest.raises(InputError, match="holds 2 calls"):
        CalibrationInputs(calibration.latents, calibration.timestep[:2], calibration.text, calibration.text_mask)


def test_a_resumed_stream_checks_a_stored_qkernel_whose_qscale_was_not_written(fixture_dit, calibration, fixtures_dir):
    """An interrupted conversion can stop between a kernel's qkernel and its qscale: the resumed run keeps the stored
    qkernel and writes the qscale it computes, so it refuses when its own rounding differs from the stored one."""
    ckpt = SafetensorsCheckpoint(fixtures_dir / "dit")

    def stream(finished=()):
        return list(gptq_tensors(dit_tensors(ckpt, fixture_dit.config, block_order=True), fixture_dit.config, "int8",
                                 calibration, dtype=jnp.float32, progress=False, finished=finished))

    whole = stream()
    cut = next(i for i, (path, _) in enumerate(whole) if path[0] == "blocks" and path[-1] == "qkernel") + 1
    assert whole[cut][0][-1] == "qscale"  # the prefix ends between block 0's first qkernel and its qscale
    resumed = stream(whole[:cut])
    for (path, a), (_, b) in zip(resumed, whole, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=str(path))
    tampered = [*whole[:cut - 1], (whole[cut - 1][0], whole[cut - 1][1] + np.int8(1))]
    with pytest.raises(CheckpointError, match="rounds differently from the interrupted run.*without --resume"):
        stream(tampered)
