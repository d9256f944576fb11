"""FP8 attention (`--quantize fp8-attention`): its arithmetic (emulated on the CPU, cuDNN under `gpu`), the DiT's
switch, and the refusals around it.

Tolerances are measured errors times 1.5: against float32 attention, on the inputs below, the emulation moved 6.86e-2
and bf16 attention 4.38e-3 (CPU, jax 0.10.2); cuDNN's FP8 attention moved 7.52e-2 on them tiled to head_dim 128 (one
H200, jax 0.11.2, 2026-12-03).
"""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from kernels import BSAParams
from longcat_jax.errors import ConfigError
from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit.quantized_linear import QuantizedLinear
from longcat_jax.models.dit.transformer import LongCatDiT
from longcat_jax.presets import TINY_DIT_CONFIG
from longcat_jax.quantization import check_quantize_supported
from longcat_jax.quantization.attention import emulated_fp8_attention, fp8_attention, output_scale, tensor_scales
from longcat_jax.quantization.formats import quantize_kernel
from longcat_jax.quantization.matmul import fp8_dot, quantize_activations
from longcat_jax.quantization.modes import PER_TENSOR, SCHEMES, QuantScheme, uses_fp8_attention
from longcat_jax.training.config import parse_train_config
from tests.quantization.test_device import H100, L40S

MARGIN = 1.5
EMULATED = 6.86e-2
CUDNN = 7.52e-2
BF16_ATTENTION = 4.38e-3
FP8_ATTENTION_MOVES = 1.08e-2  # the tiny DiT's output, fp8-attention against fp8 (CPU, jax 0.10.2, 2026-12-04)
FP8_BSA_MOVES = 1.12e-2  # the same with block-sparse self attention (the FP8 BSA forward's emulation)


def _qkv(dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (2, 192, 2, 64), jnp.float32) for key in keys)  # [B, S, H, D]
    return (q * 1.5).astype(dtype), k.astype(dtype), v.astype(dtype)


def test_emulated_fp8_attention_error():
    q, k, v = _qkv()
    want = jax.nn.dot_product_attention(q, k, v)
    error = rel_l2(emulated_fp8_attention(q, k, v), want)
    bf16 = rel_l2(jax.nn.dot_product_attention(*_qkv(jnp.bfloat16)).astype(jnp.float32), want)
    assert bf16 < BF16_ATTENTION * MARGIN
    assert 5 * bf16 < error < EMULATED * MARGIN  # rounded to e4m3 for real, and no worse than measured


def test_fp8_attention_on_the_cpu_is_the_emulation():
    q, k, v = _qkv(jnp.bfloat16)
    got = fp8_attention(q, k, v)
    assert got.dtype == jnp.bfloat16 and got.shape == q.shape
    assert jnp.array_equal(got, emulated_fp8_attention(q, k, v))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_the_output_lies_on_its_e4m3_scale(dtype):
    """The output is e4m3 values times `output_scale`, so quantizing it on that scale gives it back exactly; and the
    projection's FP8 GEMM on that scale is closer to the exact product than on per-token scales, which round the
    output a second time (measured, CPU, jax 0.10.2: 7.34e-2 against 7.81e-2)."""
    q, k, v = _qkv(dtype)
    out = fp8_attention(q, k, v)  # [B, S, H, D]
    scale = output_scale(tensor_scales(q, k, v)[2])
    values, _ = quantize_activations(out, PER_TENSOR, scale)
    assert jnp.array_equal((values.astype(jnp.float32) * scale).astype(dtype), out)
    b, s, h, d = q.shape
    weight = jax.random.normal(jax.random.key(3), (h * d, h * d)) / (h * d) ** 0.5  # [in, out]
    qkernel, qscale = quantize_kernel(weight, SCHEMES["fp8"].weight)
    want = jax.nn.dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v))).reshape(b, s, h * d) @ weight
    rows = out.reshape(b, s, h * d)
    assert rel_l2(fp8_dot(rows, qkernel, qscale, x_scale=scale), want) < rel_l2(fp8_dot(rows, qkernel, qscale), want)


def test_fp8_attention_refuses_shapes_cudnn_cannot_take():
    q = jnp.zeros((1, 16, 2, 24))
    with pytest.raises(ConfigError, match="head_dim that is a multiple of 16.*got 24.*--quantize fp8"):
        fp8_attention(q, q, q)
    with pytest.raises(ConfigError, match="k, v .* alike"):
        fp8_attention(jnp.zeros((1, 16, 2, 32)), jnp.zeros((1, 8, 2, 32)), jnp.zeros((1, 9, 2, 32)))


def test_the_mode_needs_hopper_and_fp8_compute():
    assert uses_fp8_attention("fp8-attention") and not uses_fp8_attention("fp8") and not uses_fp8_attention(None)
    check_quantize_supported("fp8-attention", [H100])
    check_quantize_supported("fp8", [L40S])
    with pytest.raises(ConfigError, match=r"cuDNN's FP8 attention.*9\.0.*NVIDIA L40S has compute capability 8\.9\. "
                                          r"Use --quantize fp8 "):
        check_quantize_supported("fp8-attention", [L40S])
    with pytest.raises(ConfigError, match="FP8 attention comes with FP8 compute"):
        dataclasses.replace(SCHEMES["int8"], attention="fp8")
    with pytest.raises(ConfigError, match="unknown attention precision 'fp16'"):
        QuantScheme("fp8", SCHEMES["fp8"].weight, SCHEMES["fp8"].compute, attention="fp16")


def test_training_refuses_fp8_attention(tmp_path):
    raw = {"data": {"folder": str(tmp_path)}, "quantize": "fp8-attention"}
    with pytest.raises(ConfigError, match="'quantize' 'fp8-attention' has no backward.*train on an FP8 base with 'fp8'"):
        parse_train_config(raw, source="train.json")


def test_the_dit_runs_its_dense_attention_in_fp8():
    """The mode switches every block's dense self attention (and nothing else): the output moves from 'fp8' by about
    what was measured, and stays within fp8's error plus one attention call's."""
    config = TINY_DIT_CONFIG
    models = {mode: LongCatDiT(config, rngs=nnx.Rngs(0), quantize=mode)
              for mode in (None, "fp8", "fp8-attention")}
    assert [m.fp8_attention for m in models.values()] == [False, False, True]
    keys = jax.random.split(jax.random.key(1), 2)
    latents = jax.random.normal(keys[0], (1, config.in_channels, 2, 8, 8))
    text = jax.random.normal(keys[1], (1, 1, 8, config.caption_channels))
    timestep = jnp.array([500.0])
    out = {mode: model(latents, timestep, text) for mode, model in models.items()}
    fp8_error = rel_l2(out["fp8"], out[None])
    # measured (CPU, jax 0.10.2, 2026-12-04, the projection on the attention output's scale): fp8 2.63e-2 from
    # float32, fp8-attention 2.70e-2 and 1.08e-2 from fp8
    assert FP8_ATTENTION_MOVES / 10 < rel_l2(out["fp8-attention"], out["fp8"]) < FP8_ATTENTION_MOVES * MARGIN
    assert rel_l2(out["fp8-attention"], out[None]) < fp8_error + EMULATED * MARGIN
    narrow_heads = dataclasses.replace(config, hidden_size=config.num_heads * 24)
    with pytest.raises(ConfigError, match="head_dim that is a multiple of 16.*got 24"):
        LongCatDiT(narrow_heads, rngs=nnx.Rngs(0), quantize="fp8-attention")  # at construction, before any call
    models["fp8-attention"].set_fp8_attention(False)
    assert jnp.array_equal(models["fp8-attention"](latents, timestep, text), out["fp8"])


def _projection_scales(monkeypatch, model, *args) -> list:
    """The x_scale of every QuantizedLinear call of one model call."""
    scales, call = [], QuantizedLinear.__call__

    def recording(self, x, x_scale=None, prequantized=None):
        scales.append(x_scale)
        return call(self, x, x_scale, prequantized)

    monkeypatch.setattr(QuantizedLinear, "__call__", recording)
    model(*args)
    monkeypatch.setattr(QuantizedLinear, "__call__", call)
    return [scale for scale in scales if scale is not None]


def test_the_projection_takes_the_fp8_attention_output_on_its_scale(monkeypatch):
    """Each block's output projection gets the dense FP8 attention's output scale (one per block, a scalar); with
    FP8 GEMMs alone, or with block-sparse attention (the FP8 BSA kernel writes bf16), none."""
    config = TINY_DIT_CONFIG
    keys = jax.random.split(jax.random.key(1), 2)
    args = (jax.random.normal(keys[0], (1, config.in_channels, 2, 8, 8)), jnp.array([500.0]),
            jax.random.normal(keys[1], (1, 1, 8, config.caption_channels)))
    fp8_attention_model = LongCatDiT(config, rngs=nnx.Rngs(0), quantize="fp8-attention")
    scales = _projection_scales(monkeypatch, fp8_attention_model, *args)
    assert len(scales) == config.depth and all(scale.shape == () for scale in scales)
    assert _projection_scales(monkeypatch, LongCatDiT(config, rngs=nnx.Rngs(0), quantize="fp8"), *args) == []
    fp8_attention_model.set_bsa(BSAParams(sparsity=0.5, chunk_3d_shape_q=(1, 2, 2), chunk_3d_shape_k=(1, 2, 2)),
                                backend="reference")
    assert _projection_scales(monkeypatch, fp8_attention_model, *args) == []


def test_the_dit_runs_its_block_sparse_attention_in_fp8():
    """With BSA on (two latent frames), the mode runs the FP8 BSA forward (emulated on the CPU): the output moves
    from 'fp8' by about what was measured (1.12e-2, CPU, jax 0.10.2), and switching it off restores 'fp8' exactly."""
    config = TINY_DIT_CONFIG
    bsa = BSAParams(sparsity=0.5, chunk_3d_shape_q=(1, 2, 2), chunk_3d_shape_k=(1, 2, 2))
    models = {mode: LongCatDiT(config, rngs=nnx.Rngs(0), quantize=mode) for mode in ("fp8", "fp8-attention")}
    keys = jax.random.split(jax.random.key(1), 2)
    latents = jax.random.normal(keys[0], (1, config.in_channels, 2, 8, 8))
    text = jax.random.normal(keys[1], (1, 1, 8, config.caption_channels))
    timestep = jnp.array([500.0])
    for model in models.values():
        model.set_bsa(bsa, backend="reference")
    out = {mode: model(latents, timestep, text) for mode, model in models.items()}
    assert FP8_BSA_MOVES / 10 < rel_l2(out["fp8-attention"], out["fp8"]) < FP8_BSA_MOVES * MARGIN
    models["fp8-attention"].set_fp8_attention(False)
    assert jnp.array_equal(models["fp8-attention"](latents, timestep, text), out["fp8"])


@pytest.mark.gpu
def test_cudnn_fp8_attention_error():
    """cuDNN's FP8 attention (Hopper+) against float32 attention: rounded for real, no worse than measured."""
    if jax.default_backend() != "gpu":
        pytest.skip("needs a GPU")
    q, k, v = (jnp.tile(x, (1, 4, 1, 2)) for x in _qkv(jnp.bfloat16))  # [2, 768, 2, 128]
    want = jax.nn.dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)), implementation="xla")
    got = jax.jit(fp8_attention)(q, k, v).astype(jnp.float32)
    assert bool(jnp.all(jnp.isfinite(got)))
    assert 5 * BF16_ATTENTION < rel_l2(got, want) < CUDNN * MARGIN
