"""`quantize_tensors`: the loaders' stream quantized tensor by tensor, or a quantized stream checked and refused."""

import ml_dtypes
import numpy as np
import pytest

from longcat_jax.errors import CheckpointError, ConfigError
from longcat_jax.quantization import INT8, dequantize_kernel, quantize_kernel, quantize_tensors, stored_quantization
from longcat_jax.quantization.formats import FP8_E4M3
from longcat_jax.quantization.policy import HIGH_PRECISION, is_quantized_kernel, is_quantized_module

QKV = ("blocks", 0, "attn", "qkv")
W2 = ("blocks", 1, "ffn", "w2")


def _stream(rng=None):
    rng = rng or np.random.default_rng(0)
    bf16 = ml_dtypes.bfloat16
    return [
        (("patch_embed", "kernel"), rng.standard_normal((1, 2, 2, 4, 8)).astype(bf16)),
        (("blocks", 0, "adaln", "kernel"), rng.standard_normal((6, 48)).astype(bf16)),
        ((*QKV, "kernel"), rng.standard_normal((8, 24)).astype(bf16)),
        ((*QKV, "bias"), rng.standard_normal((24,)).astype(bf16)),
        (("blocks", 0, "attn", "q_norm", "scale"), np.ones((4,), bf16)),
        ((*W2, "kernel"), rng.standard_normal((16, 8)).astype(bf16)),
        (("final_layer", "linear", "kernel"), rng.standard_normal((8, 16)).astype(bf16)),
    ]


def test_policy_selects_the_large_block_linears_only():
    assert is_quantized_module(QKV) and is_quantized_module(W2)
    assert is_quantized_module(("blocks", 7, "cross_attn", "kv"))
    for kept in (("blocks", 0, "adaln"), ("final_layer", "linear"), ("caption_embed", "linear_in"),
                 ("timestep_embed", "linear_out"), ("blocks", "0", "attn", "qkv"), ("attn", "qkv")):
        assert not is_quantized_module(kept), kept
    assert is_quantized_kernel((*QKV, "kernel")) and not is_quantized_kernel((*QKV, "bias"))
    assert all(reason.strip() for reason in HIGH_PRECISION.values())


@pytest.mark.parametrize("mode,fmt", [("fp8", FP8_E4M3), ("fp8-weight-only", FP8_E4M3), ("int8", INT8)])
def test_float_stream_is_quantized_in_place_of_the_kernels(mode, fmt):
    source = _stream()
    out = list(quantize_tensors(iter(source), mode))
    paths = [p for p, _ in out]
    # Order kept; each quantized kernel becomes (qkernel, qscale) where the kernel was.
    assert paths == [("patch_embed", "kernel"), ("blocks", 0, "adaln", "kernel"), (*QKV, "qkernel"), (*QKV, "qscale"),
                     (*QKV, "bias"), ("blocks", 0, "attn", "q_norm", "scale"), (*W2, "qkernel"), (*W2, "qscale"),
                     ("final_layer", "linear", "kernel")]
    got = dict(out)
    for module, index in ((QKV, 2), (W2, 5)):
        kernel = source[index][1]
        assert got[(*module, "qkernel")].dtype == fmt.dtype and got[(*module, "qkernel")].shape == kernel.shape[::-1]
        want_q, want_s = quantize_kernel(kernel, fmt)
        np.testing.assert_array_equal(got[(*module, "qscale")], want_s)
        back = dequantize_kernel(got[(*module, "qkernel")], got[(*module, "qscale")])
        assert np.max(np.abs(back - kernel.astype(np.float32))) <= np.max(np.abs(kernel.astype(np.float32))) / 8
    for index in (0, 1, 3, 4, 6):  # everything else passes untouched (same object)
        assert got[source[index][0]] is source[index][1]


def test_mode_none_passes_floats_and_refuses_a_quantized_checkpoint():
    source = _stream()
    assert [p for p, _ in quantize_tensors(iter(source), "none")] == [p for p, _ in source]
    quantized = list(quantize_tensors(iter(source), "int8"))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.qkv\.qkernel is a quantized weight.*quantize='int8'"):
        list(quantize_tensors(iter(quantized), "none"))
    fp8 = list(quantize_tensors(iter(source), "fp8"))
    with pytest.raises(CheckpointError, match="quantize='fp8' or 'fp8-attention' or 'fp8-weight-only'"):
        list(quantize_tensors(iter(fp8), None))
    with pytest.raises(ConfigError, match="unknown quantization mode 'fp4'"):
        list(quantize_tensors(iter(source), "fp4"))


def test_quantized_stream_is_checked_and_passed_through():
    quantized = list(quantize_tensors(iter(_stream()), "fp8"))
    again = list(quantize_tensors(iter(quantized), "fp8-weight-only", source="ckpt"))
    assert [p for p, _ in again] == [p for p, _ in quantized]
    for (_, a), (_, b) in zip(again, quantized, strict=True):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))
    # The scale may come first; the pair is yielded together, qkernel first.
    swapped = [quantized[3], quantized[2]]
    assert [p[-1] for p, _ in quantize_tensors(iter(swapped), "fp8")] == ["qkernel", "qscale"]


def _replace(stream, path, array):
    return [(p, array if p == path else a) for p, a in stream]


@pytest.mark.parametrize(
    "bad_scale,pattern",
    [
        (np.full((24,), np.nan, np.float32), r"ckpt: blocks\.0\.attn\.qkv\.qscale holds 24 invalid scale\(s\) \(channel 0: nan"),
        (np.concatenate([np.ones(23, np.float32), [np.inf]]).astype(np.float32), r"qkv\.qscale holds 1 invalid.*channel 23: inf"),
        (np.concatenate([[0.0], np.ones(23)]).astype(np.float32), r"qkv\.qscale holds 1 invalid.*channel 0: 0\.0"),
        (-np.ones((24,), np.float32), r"qkv\.qscale holds 24 invalid.*finite and positive"),
        (np.ones((23,), np.float32), r"qkv\.qscale is float32 \(23,\).*one float scale per output channel \(24,\)"),
        (np.ones((24, 1), np.float32), r"qkv\.qscale is float32 \(24, 1\)"),
        (np.ones((24,), np.int32), r"qkv\.qscale is int32"),
    ],
)
def test_corrupt_scales_are_refused_with_the_key(bad_scale, pattern):
    quantized = _replace(list(quantize_tensors(iter(_stream()), "int8")), (*QKV, "qscale"), bad_scale)
    with pytest.raises(CheckpointError, match=pattern):
        list(quantize_tensors(iter(quantized), "int8", source="ckpt"))


def test_mismatched_or_damaged_quantized_weights_are_refused():
    int8 = list(quantize_tensors(iter(_stream()), "int8"))
    with pytest.raises(CheckpointError, match=r"ckpt: blocks\.0\.attn\.qkv\.qkernel is stored as int8, but quantize='fp8' "
                                              r"needs float8_e4m3fn weights; load it with quantize='int8'"):
        list(quantize_tensors(iter(int8), "fp8", source="ckpt"))
    fp8 = list(quantize_tensors(iter(_stream()), "fp8"))
    with pytest.raises(CheckpointError, match="stored as float8_e4m3fn, but quantize='int8'"):
        list(quantize_tensors(iter(fp8), "int8", source="ckpt"))
    nan_kernel = np.asarray(dict(fp8)[(*QKV, "qkernel")]).copy()
    nan_kernel[0, 0] = np.nan
    with pytest.raises(CheckpointError, match=r"qkv\.qkernel holds NaN"):
        list(quantize_tensors(iter(_replace(fp8, (*QKV, "qkernel"), nan_kernel)), "fp8", source="ckpt"))
    with pytest.raises(CheckpointError, match=r"qkv\.qkernel has shape \(24,\)"):
        list(quantize_tensors(iter(_replace(int8, (*QKV, "qkernel"), np.zeros(24, np.int8))), "int8"))
    missing = [(p, a) for p, a in int8 if p != (*W2, "qscale")]
    with pytest.raises(CheckpointError, match=r"blocks\.1\.ffn\.w2\.qscale is missing"):
        list(quantize_tensors(iter(missing), "int8"))
    kept = [(("blocks", 0, "adaln", "qkernel"), np.zeros((48, 6), np.int8))]
    with pytest.raises(CheckpointError, match=r"adaln\.qkernel is quantized, but this version keeps blocks\.0\.adaln"):
        list(quantize_tensors(iter(kept), "int8"))


def test_stored_quantization_reads_an_index():
    entries = [(("blocks", 0, "attn", "qkv", "qkernel"), "float8_e4m3fn"), (("blocks", 0, "attn", "qkv", "qscale"), "float32")]
    assert stored_quantization(entries) == "fp8_e4m3"
    assert stored_quantization([(("blocks", 0, "ffn", "w1", "qkernel"), "int8")]) == "int8"
    assert stored_quantization([(("blocks", 0, "ffn", "w1", "kernel"), "bfloat16")]) is None
    with pytest.raises(CheckpointError, match="mixes quantized weight formats"):
        stored_quantization([*entries, (("blocks", 0, "ffn", "w1", "qkernel"), "int8")])
