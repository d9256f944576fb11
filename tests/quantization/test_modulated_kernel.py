"""The FP8 FFN input's row kernel (`quantization.modulated_kernel`): LayerNorm, adaLN modulation and per-token e4m3
quantization as the XLA form computes them, in Pallas' interpreter, lowered for CUDA, natively (gpu), and in a block."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit.block import DiTBlock
from longcat_jax.models.dit.layers import LayerNorm, modulate_f32
from longcat_jax.models.dit.quantized_linear import QuantizedLinear
from longcat_jax.quantization.matmul import quantize_activations
from longcat_jax.quantization.modes import SCHEMES
from longcat_jax.quantization.modulated_kernel import modulated_quantize

EPS = 1e-6


def _inputs(batch=2, frames=3, per_frame=8, width=256, seed=0):
    """x [B, T, S, C] bf16 with an offset and a spread per token; shift, scale [B, T, 1, C] float32."""
    keys = jax.random.split(jax.random.key(seed), 4)
    offsets = jax.random.normal(keys[1], (batch, frames, per_frame, 1))
    x = jax.random.normal(keys[0], (batch, frames, per_frame, width)) * 3.0 + offsets
    shift = jax.random.normal(keys[2], (batch, frames, 1, width)) * 0.5
    scale = jax.random.normal(keys[3], (batch, frames, 1, width)) * 0.5
    return x.astype(jnp.bfloat16), shift, scale


def _xla_form(x, shift, scale):
    b, t, s, c = x.shape
    modulated = modulate_f32(LayerNorm(c, affine=False, eps=EPS, rngs=nnx.Rngs(0)), x, shift, scale)
    xq, x_scale = quantize_activations(modulated.reshape(b * t * s, c))
    return xq, x_scale


def _row_kernel(x, shift, scale, **kwargs):
    b, t, s, c = x.shape
    return modulated_quantize(x.reshape(-1, c), shift.reshape(-1, c), scale.reshape(-1, c), rows_per_group=s, eps=EPS,
                              **kwargs)


def test_the_row_kernel_is_the_xla_form_in_the_interpreter():
    operands = _inputs()
    xq, x_scale = _row_kernel(*operands, interpret=True)
    want_xq, want_scale = _xla_form(*operands)
    assert xq.dtype == jnp.float8_e4m3fn and xq.shape == want_xq.shape and x_scale.shape == want_scale.shape
    np.testing.assert_allclose(x_scale, want_scale, rtol=1e-6)
    np.testing.assert_array_equal(xq.astype(jnp.float32), want_xq.astype(jnp.float32))
    # each frame's own modulation: the same tokens under another frame's shift and scale quantize differently
    shift, scale = operands[1], operands[2]
    swapped = _row_kernel(operands[0], shift[:, ::-1], scale[:, ::-1], interpret=True)[0]
    assert not np.array_equal(swapped.astype(jnp.float32), xq.astype(jnp.float32))


def test_the_row_kernel_refuses_what_it_cannot_take():
    x, shift, scale = _inputs(width=96)
    with pytest.raises(ValueError, match="power-of-two width, got width=96"):
        _row_kernel(x, shift, scale, interpret=True)
    x, shift, scale = _inputs()
    with pytest.raises(ValueError, match="shift/scale rows of rows_per_group=4"):
        modulated_quantize(x.reshape(-1, 256), shift.reshape(-1, 256), scale.reshape(-1, 256), rows_per_group=4, eps=EPS)


def test_the_row_kernel_lowers_to_triton_for_cuda():
    x, shift, scale = _inputs()
    args = (x.reshape(-1, 256), shift.reshape(-1, 256), scale.reshape(-1, 256))
    lowered = jax.jit(lambda *a: modulated_quantize(*a, rows_per_group=8, eps=EPS)).trace(*args)
    text = lowered.lower(lowering_platforms=("cuda",)).as_text()
    assert "modulated_quantize" in text and "triton" in text.lower()


def _fp8_block(width=256, heads=2, ffn=704):
    block = DiTBlock(width, heads, ffn, 64, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.float32)
    for name in ("w1", "w2", "w3"):
        setattr(block.ffn, name, QuantizedLinear.from_linear(getattr(block.ffn, name), SCHEMES["fp8"]))
    return block


def test_a_block_hands_its_fp8_ffn_the_quantized_input_and_keeps_its_gradient():
    """The block's FFN input comes quantized from the float32 modulation (the XLA form on the CPU); without that
    (context parallel) the FFN quantizes the bf16 x_mod itself: the same within bf16's rounding. The gradient still
    reaches x, shift and scale through x_mod."""
    block = _fp8_block()
    x, shift, scale = _inputs(per_frame=16)
    gate = jnp.full(shift.shape, 0.5, jnp.float32)
    prequantized = block._quantized_ffn_input(x, shift, scale)
    assert prequantized is not None
    np.testing.assert_array_equal(prequantized[0].reshape(-1, 256).astype(jnp.float32),
                                  _xla_form(x, shift, scale)[0].astype(jnp.float32))
    fused = block._ffn_residual(x, 0, shift, scale, gate)
    block.ffn.context_parallel = object()  # stands for a plan: the block's FFN then quantizes x_mod itself
    assert block._quantized_ffn_input(x, shift, scale) is None
    own = block._ffn_residual(x, 0, shift, scale, gate)
    assert 0 < rel_l2(fused, own) < 2e-2
    block.ffn.context_parallel = None

    def loss(x, shift, scale):
        return jnp.sum(block._ffn_residual(x, 0, shift, scale, gate).astype(jnp.float32) ** 2)

    grads = jax.grad(loss, argnums=(0, 1, 2))(x, shift, scale)
    assert all(bool(jnp.all(jnp.isfinite(g.astype(jnp.float32)))) and float(jnp.max(jnp.abs(g))) > 0 for g in grads)


@pytest.mark.gpu
def test_on_gpus_the_row_kernel_is_the_xla_form():
    operands = _inputs(batch=2, frames=4, per_frame=1024, width=4096)
    xq, x_scale = _row_kernel(*operands)
    want_xq, want_scale = jax.jit(_xla_form)(*operands)
    np.testing.assert_allclose(x_scale, want_scale, rtol=1e-5)
    # reduction order and rsqrt may differ in the last bits, which can move a value across an e4m3 tie
    assert rel_l2(xq.astype(jnp.float32) * x_scale, want_xq.astype(jnp.float32) * want_scale) < 1e-3
