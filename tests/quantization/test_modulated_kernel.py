"""The FP8 FFN input's row kernel (`quantization.modulated_kernel`): LayerNorm, adaLN modulation and per-token e4m3
quantization as the XLA form computes them, in Pallas' interpreter, lowered for CUDA, natively (gpu), and in a block."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit.block import DiTBlock
from longcat_jax.models.dit.layers import LayerNorm, LoRAAdapter, modulate_f32
from longcat_jax.models.dit.quantized_linear import QuantizedLinear
from longcat_jax.models.dit.transformer import LongCatDiT
from longcat_jax.presets import TINY_DIT_CONFIG
from longcat_jax.quantization.matmul import quantize_activations
from longcat_jax.quantization.modes import SCHEMES
from longcat_jax.quantization.modulated_kernel import modulated_quantize
from tests.helpers.cuda_lowering import lowered_for_cuda

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
    return modulated_quantize(x.reshape(-1, c), (1.0 + scale).reshape(-1, c), shift.reshape(-1, c), rows_per_group=s,
                              eps=EPS, **kwargs)


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
    with pytest.raises(ValueError, match="multiplier/offset rows of rows_per_group=4"):
        modulated_quantize(x.reshape(-1, 256), scale.reshape(-1, 256), shift.reshape(-1, 256), rows_per_group=4, eps=EPS)


def test_the_row_kernel_lowers_to_triton_for_cuda():
    x, shift, scale = _inputs()
    args = (x.reshape(-1, 256), scale.reshape(-1, 256), shift.reshape(-1, 256))
    text = lowered_for_cuda(lambda *a: modulated_quantize(*a, rows_per_group=8, eps=EPS), *args)
    assert "modulated_quantize" in text and "triton" in text.lower()


def _plain_block(width=256, heads=2, ffn=704):
    block = DiTBlock(width, heads, ffn, 64, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.float32)
    block.cross_norm.scale.set_value(1.0 + 0.1 * jax.random.normal(jax.random.key(7), (width,)))
    block.cross_norm.bias.set_value(0.1 * jax.random.normal(jax.random.key(8), (width,)))
    return block


def _fp8_block():
    """A block whose qkv, cross-attention q and FFN Linears are FP8 (the ones that take a prequantized input)."""
    block = _plain_block()
    for parent, name in ((block.attn, "qkv"), (block.cross_attn, "q"), (block.ffn, "w1"), (block.ffn, "w2"),
                         (block.ffn, "w3")):
        setattr(parent, name, QuantizedLinear.from_linear(getattr(parent, name), SCHEMES["fp8"]))
    return block


def test_a_block_hands_its_fp8_linears_their_inputs_quantized_from_float32():
    """Each of the three inputs is quantized from its float32 row, the XLA form on the CPU: the self attention's and
    the FFN's adaLN-modulated, the cross attention's through its norm's own weight and bias."""
    block = _fp8_block()
    x, shift, scale = _inputs(per_frame=16)
    b, t, s, c = x.shape

    def quantized(linear, norm, modulation=None):
        got = block._prequantized_input(linear, norm, x, modulation)
        assert got is not None and got[0].shape == (b, t * s, c) and got[1].shape == (b, t * s, 1)
        return got[0].reshape(-1, c).astype(jnp.float32)

    want_modulated = _xla_form(x, shift, scale)[0].astype(jnp.float32)
    np.testing.assert_array_equal(quantized(block.attn.qkv, block.attn_norm, (shift, scale)), want_modulated)
    np.testing.assert_array_equal(quantized(block.ffn.w1, block.ffn_norm, (shift, scale)), want_modulated)
    want_affine = quantize_activations(block.cross_norm.normalize_f32(x).reshape(-1, c))[0].astype(jnp.float32)
    np.testing.assert_array_equal(quantized(block.cross_attn.q, block.cross_norm), want_affine)
    # with the row kernels off (arrays split over devices), the Linears quantize their inputs themselves
    block.row_kernels = False
    assert block._prequantized_input(block.attn.qkv, block.attn_norm, x, (shift, scale)) is None
    block.row_kernels = True
    # a bf16 Linear, or an FP8 one with a LoRA, takes its input as it is
    assert block._prequantized_input(block.attn.proj, block.attn_norm, x, (shift, scale)) is None
    block.ffn.w1.loras.append(LoRAAdapter(jnp.zeros((c, 2)), jnp.zeros((2, 704)), 1.0, dtype=jnp.bfloat16,
                                          param_dtype=jnp.float32))
    assert block._prequantized_input(block.ffn.w1, block.ffn_norm, x, (shift, scale)) is None


def test_the_block_with_prequantized_inputs_is_the_block_without_and_keeps_its_gradient(monkeypatch):
    """The whole block with its inputs quantized from float32 against each Linear quantizing its bf16 input: as far
    from the unquantized block as that (the bf16 rounding it skips is 30x smaller than e4m3's), though the two differ
    where a value crosses an e4m3 rounding boundary (jitted on the CPU, 2026-12-04: 3.381e-2 and 3.385e-2 from it,
    1.98e-2 apart). The gradient still reaches x through the Linears' float inputs."""
    block, plain = _fp8_block(), _plain_block()
    b, t, s, c = 1, 2, 16, 256
    x = jax.random.normal(jax.random.key(3), (b, t * s, c)).astype(jnp.bfloat16)
    text = jax.random.normal(jax.random.key(4), (b, 8, c)).astype(jnp.bfloat16)
    t_emb = jax.random.normal(jax.random.key(5), (b, t, 64))

    def run(x, block=block):
        return block(x, text, None, t_emb, (t, 4, 4))[0]

    def jitted(block=block):  # a new function each time: jax.jit caches its trace by the function it wraps
        return jax.jit(lambda x: run(x, block))

    fused = jitted()(x)
    with monkeypatch.context() as patch:
        patch.setattr(DiTBlock, "_prequantized_input", lambda *args: None)
        own = jitted()(x)
    reference = jitted(plain)(x)
    assert rel_l2(fused, own) < 2.5e-2
    assert rel_l2(fused, reference) < 1.05 * rel_l2(own, reference)
    # the Linears multiply what they are handed: twice the scales move the output by O(1)
    handed = DiTBlock._prequantized_input

    def doubled(*args):
        xq, x_scale = handed(*args)
        return xq, 2.0 * x_scale

    with monkeypatch.context() as patch:
        patch.setattr(DiTBlock, "_prequantized_input", doubled)
        assert rel_l2(jitted()(x), fused) > 0.3
    grad = jax.jit(jax.grad(lambda x: jnp.sum(run(x).astype(jnp.float32) ** 2)))(x)
    assert bool(jnp.all(jnp.isfinite(grad.astype(jnp.float32)))) and float(jnp.max(jnp.abs(grad))) > 0


@pytest.mark.gpu
def test_on_gpus_the_row_kernel_is_the_xla_form():
    operands = _inputs(batch=2, frames=4, per_frame=1024, width=4096)
    xq, x_scale = _row_kernel(*operands)
    want_xq, want_scale = jax.jit(_xla_form)(*operands)
    np.testing.assert_allclose(x_scale, want_scale, rtol=1e-5)
    # reduction order and rsqrt may differ in the last bits, which can move a value across an e4m3 tie
    assert rel_l2(xq.astype(jnp.float32) * x_scale, want_xq.astype(jnp.float32) * want_scale) < 1e-3


def test_context_parallelism_turns_the_row_kernels_off():
    model = LongCatDiT(TINY_DIT_CONFIG, rngs=nnx.Rngs(0), quantize="fp8")
    assert all(block.row_kernels and block.ffn.row_kernels for block in model.blocks)
    model.set_context_parallel(object())  # stands for a plan: only whether one is set matters here
    assert not any(block.row_kernels or block.ffn.row_kernels for block in model.blocks)
    model.set_context_parallel(None)
    assert all(block.row_kernels and block.ffn.row_kernels for block in model.blocks)
