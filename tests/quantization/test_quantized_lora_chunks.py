"""A quantized Linear with run-time LoRAs over many tokens: chunked, it gives the output and the LoRA gradients of all
tokens at once, keeps its float32 temporaries to one chunk, its FP8 GEMMs stay FP8 GEMMs, and its chunks of tokens
split over devices move nothing between them. Weight-only, it is the bf16 Linear of its dequantized weights joined to
its LoRAs, with that Linear's output and gradients, and trained all rows at once that Linear's temporaries."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit.layers import Linear, LoRAAdapter, LoRAWeight
from longcat_jax.models.dit.quantized_linear import LORA_CHUNK_ROWS, QuantizedLinear, token_chunks
from longcat_jax.quantization import CUBLAS_FP8_GEMM, FP8_E4M3, SCHEMES, QuantScheme
from longcat_jax.quantization.compile_options import FP8_GPU_COMPILER_OPTIONS

PER_TENSOR_FP8 = QuantScheme("fp8", FP8_E4M3, "fp8", "per_tensor")
SCHEME_CASES = {"fp8": SCHEMES["fp8"], "int8": SCHEMES["int8"], "fp8-weight-only": SCHEMES["fp8-weight-only"],
                "fp8-per-tensor": PER_TENSOR_FP8}
WEIGHT_ONLY = ["int8", "fp8-weight-only"]
CHUNK = 32  # rows per chunk in the small cases below
# x shapes: 2 x 50 tokens (5 interleaved chunks of 10 tokens), 100 rows (4 interleaved chunks of 25), 3 x 37
# tokens (37 is prime: 4 contiguous chunks of 10 tokens, the last overlapping the third by 3).
SHAPES = [(2, 50, 64), (100, 64), (3, 37, 64)]
ALL_AT_ONCE = 10**9


def _quantized(scheme: QuantScheme, *, dtype, lora_dtype, chunk_rows: int, in_features=64, out_features=48,
               rank=4, abstract=False) -> QuantizedLinear:
    """A QuantizedLinear with a bias and two run-time LoRAs, multiplying `chunk_rows` rows at a time."""
    def make():
        linear = Linear(in_features, out_features, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=dtype)
        linear.bias.set_value(jnp.linspace(-1, 1, out_features).astype(dtype))
        quantized = QuantizedLinear.from_linear(linear, scheme)
        rng = np.random.default_rng(0)
        quantized.loras = nnx.List([
            LoRAAdapter(rng.standard_normal((in_features, r)) / 8, rng.standard_normal((r, out_features)) / 2, s,
                        dtype=dtype, param_dtype=lora_dtype)
            for r, s in ((rank, 0.5), (2, 1.5))])
        quantized.lora_chunk_rows = chunk_rows
        return quantized

    return nnx.eval_shape(make) if abstract else make()


def _input(shape, dtype):
    # Token magnitudes from 0.01 to 3, so per-tensor and per-token scales differ.
    magnitudes = jnp.linspace(0.01, 3, shape[-2])[:, None]
    return (jax.random.normal(jax.random.key(1), shape, jnp.float32) * magnitudes).astype(dtype)


def _call(layer, x):
    graphdef, state = nnx.split(layer)
    return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, x)


def test_token_chunks_hold_at_most_the_rows_asked_for_and_cover_every_token():
    for batch, tokens, max_rows in [(1, 168960, 32768), (2, 37440, 32768), (1, 37440, 32768), (3, 37, 32),
                                    (1, 100, 32), (2, 50, 32), (1, 32, 32), (4, 5, 2)]:
        chunks, per_chunk = token_chunks(batch, tokens, max_rows)
        assert chunks * per_chunk >= tokens and (chunks - 1) * per_chunk < tokens
        assert batch * per_chunk <= max_rows or per_chunk == 1
        assert chunks <= 2 * -(-batch * tokens // max_rows)
    assert token_chunks(1, 168960, LORA_CHUNK_ROWS) == (6, 28160)  # the 720p refinement: 6 chunks, no remainder
    assert token_chunks(2, 37440, LORA_CHUNK_ROWS) == (3, 12480)  # 480p with guidance (batch 2)
    assert token_chunks(1, 37, 32) == (2, 19)  # a prime: contiguous chunks
    assert token_chunks(1, 32768, LORA_CHUNK_ROWS) == (1, 32768)


@pytest.mark.parametrize("shape", SHAPES, ids=["batch2-interleaved", "rows-interleaved", "prime-contiguous"])
@pytest.mark.parametrize("mode", list(SCHEME_CASES))
def test_chunked_output_equals_all_rows_at_once(mode, shape):
    scheme = SCHEME_CASES[mode]
    for dtype in (jnp.bfloat16, jnp.float32):
        x = _input(shape, dtype)
        chunked = _quantized(scheme, dtype=dtype, lora_dtype=dtype, chunk_rows=CHUNK)
        graphdef, state = nnx.split(chunked)
        jaxpr = str(jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x))
        assert re.search(r"\b(scan|while)\[", jaxpr)  # it did run in chunks
        got = _call(chunked, x)
        want = _call(_quantized(scheme, dtype=dtype, lora_dtype=dtype, chunk_rows=ALL_AT_ONCE), x)
        assert got.shape == want.shape == shape[:-1] + (48,) and got.dtype == dtype
        if dtype == jnp.bfloat16:
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # bit for bit after the rounding
        else:
            # The CPU's float32 GEMMs of another row count may round differently (measured: at most 4.8e-6 abs).
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=2e-5)


def _lora_gradients(layer, x, cotangent):
    graphdef, factors, rest = nnx.split(layer, LoRAWeight, ...)

    def loss(factors, x):
        return jnp.sum(nnx.merge(graphdef, factors, rest)(x).astype(jnp.float32) * cotangent)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(factors, x)


@pytest.mark.parametrize("mode", ["fp8", "int8"])
def test_lora_gradients_through_chunks_match_all_rows_at_once(mode):
    """As in LoRA training on a quantized base: float32 factors, activations in float32 or bf16."""
    scheme = SCHEMES[mode]
    shape = (1, 111, 64)  # 4 contiguous chunks of 28 tokens (111 = 3 x 37 has no divisor from 4 to 8)
    cotangent = jax.random.normal(jax.random.key(2), shape[:-1] + (48,), jnp.float32)
    for dtype in (jnp.float32, jnp.bfloat16):
        x = _input(shape, dtype)
        layers = {rows: _quantized(scheme, dtype=dtype, lora_dtype=jnp.float32, chunk_rows=rows)
                  for rows in (CHUNK, ALL_AT_ONCE)}
        (chunked_factors, chunked_dx), (whole_factors, whole_dx) = (_lora_gradients(layers[rows], x, cotangent)
                                                                  for rows in (CHUNK, ALL_AT_ONCE))
        assert chunked_dx.dtype == dtype and rel_l2(chunked_dx, whole_dx) < 1e-6  # the straight-through input gradient
        pairs = list(zip(jax.tree.leaves(chunked_factors), jax.tree.leaves(whole_factors), strict=True))
        assert len(pairs) == 4 and all(c.dtype == jnp.float32 for c, _ in pairs)
        if dtype == jnp.float32:
            for chunked, whole in pairs:  # measured (CPU, jax 0.10.2): at most 2.2e-7
                assert rel_l2(chunked, whole) < 1e-6
            continue
        # bf16 activations: each chunk's share of a factor's gradient is rounded to bf16 before the chunks are
        # summed (in float32), where all rows at once round the sum once; both are as far from the exact gradient
        # (measured against float64, CPU, jax 0.10.2: 2.96e-3 chunked, 2.74e-3 at once for the down factor).
        adapter = layers[ALL_AT_ONCE].loras[0]
        f64 = lambda a: np.asarray(jnp.asarray(a, jnp.float32), np.float64)  # noqa: E731
        x64, ct64 = f64(x).reshape(-1, 64), f64(cotangent).reshape(-1, 48)
        exact_down = x64.T @ (ct64 @ f64(adapter.scaled_up()).T)
        exact_up = f64(adapter.scale.get_value()) * f64(adapter.low(x)).reshape(-1, 4).T @ ct64
        factors = {name: (c, w) for name, (c, w) in zip(("down", "up"), pairs[:2], strict=True)}
        for name, exact in (("down", exact_down), ("up", exact_up)):
            chunked, whole = factors[name]
            assert rel_l2(chunked, exact) < 1.25 * rel_l2(whole, exact) + 1e-6, name


def test_tokens_split_over_devices_are_chunked_without_moving_them():
    """Context parallel: x [B, N, C] split over 4 devices along N; the interleaved chunks need no collective."""
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (tests/conftest.py asks XLA for 8 CPU devices)")
    mesh = Mesh(np.array(jax.devices()[:4]), ("context",))
    tokens = NamedSharding(mesh, P(None, "context"))
    for mode in ("fp8", "int8"):
        layer = _quantized(SCHEMES[mode], dtype=jnp.bfloat16, lora_dtype=jnp.bfloat16, chunk_rows=CHUNK)
        graphdef, state = nnx.split(layer)
        state = jax.device_put(state, NamedSharding(mesh, P()))
        for shape in ((1, 256, 64), (2, 128, 64)):  # 8 chunks of 32 tokens x 1; 8 chunks of 16 tokens x 2
            x = jax.device_put(_input(shape, jnp.bfloat16), tokens)
            run = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x), out_shardings=tokens)
            hlo = run.lower(state, x).compile().as_text()
            assert not re.findall(r"all-gather|all-to-all|collective-permute|all-reduce", hlo), mode
            np.testing.assert_array_equal(np.asarray(run(state, x)), np.asarray(_call(layer, jax.device_get(x))))


def test_fp8_gemms_stay_fp8_gemms_in_chunks():
    layer = _quantized(SCHEMES["fp8"], dtype=jnp.bfloat16, lora_dtype=jnp.bfloat16, chunk_rows=CHUNK)
    graphdef, state = nnx.split(layer)
    text = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, _input((1, 256, 64), jnp.bfloat16)).as_text()
    operands = re.findall(r"stablehlo\.dot_general .*: \((tensor<[^>]+>), (tensor<[^>]+>)\)", text)
    assert ("tensor<1x32x64xf8E4M3FN>", "tensor<48x64xf8E4M3FN>") in operands  # one chunk of 32 tokens, e4m3 x e4m3


def _temp_bytes(scheme, rows: int, chunk_rows: int, dtype, device=None, in_features=512, out_features=1536) -> int:
    """XLA's temporary bytes of the LoRA'd quantized Linear over x [1, rows, in], compiled only (nothing runs)."""
    layer = _quantized(scheme, dtype=dtype, lora_dtype=dtype, chunk_rows=chunk_rows, in_features=in_features,
                       out_features=out_features, rank=128, abstract=True)
    graphdef, state = nnx.split(layer)
    device = device or jax.devices()[0]
    place = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=jax.sharding.SingleDeviceSharding(device))  # noqa: E731
    state = jax.tree.map(place, state)
    x = place(jax.ShapeDtypeStruct((1, rows, in_features), dtype))
    options = FP8_GPU_COMPILER_OPTIONS if device.platform == "gpu" and scheme.weight == FP8_E4M3 else None
    run = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x), compiler_options=options)
    return run.lower(state, x).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("mode", ["fp8"])
def test_float32_temporaries_stay_those_of_one_chunk(mode):
    """The 720p refinement's token count (168,960): all rows at once keep the GEMM's and the LoRA's float32 results
    whole; chunked, the temporaries are those of a chunk and do not grow with the tokens. Float32 activations: the
    CPU computes bf16 slices in float32, which would add a float32 copy of the whole input here (GPUs do not)."""
    scheme = SCHEMES[mode]
    whole = _temp_bytes(scheme, 168960, ALL_AT_ONCE, jnp.float32)
    assert whole >= 2 * 4 * 168960 * 1536  # the earlier form: two float32 [tokens, out] results
    chunked = _temp_bytes(scheme, 168960, LORA_CHUNK_ROWS, jnp.float32)
    assert token_chunks(1, 84480, LORA_CHUNK_ROWS) == (3, 28160)  # the chunks of 168,960 tokens, half as many
    assert chunked <= _temp_bytes(scheme, 84480, LORA_CHUNK_ROWS, jnp.float32)
    # One chunk's: those of all rows at once over 28,160 rows, and (FP8) the chunk's input in float32 (CPU).
    # Measured (CPU, jax 0.10.2): 554 / 498 MiB (fp8); 2,974 MiB all at once.
    assert chunked < 1.25 * _temp_bytes(scheme, 28160, ALL_AT_ONCE, jnp.float32) < whole / 4


@pytest.mark.gpu
def test_the_real_size_qkv_linear_with_a_lora_keeps_one_chunk_and_runs_the_fp8_gemm():
    """On a GPU, bf16, the qkv Linear of the real model (4096 -> 12288, a rank-128 LoRA) at 168,960 tokens: XLA's
    temporaries are one chunk's (two float32 [28,160, 12,288] results, 2.6 GiB, and the chunk's e4m3 input), not
    the 15.5 GiB of the two whole float32 results, and the GEMM is cuBLASLt's FP8 one."""
    device = jax.devices()[0]
    capability = tuple(int(p) for p in str(getattr(device, "compute_capability", "0.0")).split(".")[:2])
    if capability < (8, 9):
        pytest.skip(f"{device.device_kind} (compute capability {capability}) has no FP8 tensor cores")
    scheme, size = SCHEMES["fp8"], dict(in_features=4096, out_features=12288)
    chunked = _temp_bytes(scheme, 168960, LORA_CHUNK_ROWS, jnp.bfloat16, device, **size)
    assert chunked < 2 * 4 * LORA_CHUNK_ROWS * 12288 + 2**30, chunked / 2**30
    layer = _quantized(scheme, dtype=jnp.bfloat16, lora_dtype=jnp.bfloat16, chunk_rows=LORA_CHUNK_ROWS, rank=128,
                       abstract=True, **size)
    graphdef, state = nnx.split(layer)
    x = jax.ShapeDtypeStruct((1, 168960, 4096), jnp.bfloat16)
    hlo = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x), compiler_options=FP8_GPU_COMPILER_OPTIONS).lower(
        state, x).compile().as_text()
    assert CUBLAS_FP8_GEMM in hlo


def _bf16_twin(layer: QuantizedLinear) -> Linear:
    """The bf16 Linear of `layer`'s dequantized weights (rounded to its dtype), its bias and its LoRAs."""
    linear = Linear(layer.in_features, layer.out_features, rngs=nnx.Rngs(0), dtype=layer.dtype, param_dtype=layer.dtype)
    linear.kernel.set_value(layer.dequantized_kernel(layer.dtype))
    linear.bias.set_value(layer.bias.get_value())
    linear.loras = layer.loras
    return linear


@pytest.mark.parametrize("mode", WEIGHT_ONLY)
def test_a_weight_only_linear_with_loras_is_the_bf16_linear_of_its_dequantized_weights(mode):
    """Output bit for bit, in chunks or not, and the LoRA factors' and input's gradients all rows at once, as training
    runs it (float32 factors, bf16 activations; in chunks the factors' gradients are summed over chunks, above)."""
    x = _input((2, 50, 64), jnp.bfloat16)
    cotangent = jax.random.normal(jax.random.key(2), (2, 50, 48), jnp.float32)
    layer = _quantized(SCHEMES[mode], dtype=jnp.bfloat16, lora_dtype=jnp.float32, chunk_rows=CHUNK)
    twin = _bf16_twin(layer)
    np.testing.assert_array_equal(np.asarray(_call(layer, x)), np.asarray(_call(twin, x)))
    layer.lora_chunk_rows = None
    np.testing.assert_array_equal(np.asarray(_call(layer, x)), np.asarray(_call(twin, x)))
    (factors, dx), (twin_factors, twin_dx) = _lora_gradients(layer, x, cotangent), _lora_gradients(twin, x, cotangent)
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(twin_dx))
    for got, want in zip(jax.tree.leaves(factors), jax.tree.leaves(twin_factors), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _gradient_temp_bytes(layer, rows: int) -> int:
    """XLA's temporary bytes of the LoRA factors' and input's gradients of `layer` over x [1, rows, in] (CPU)."""
    graphdef, factors, rest = nnx.split(layer, LoRAWeight, ...)

    def loss(factors, x):
        return jnp.sum(nnx.merge(graphdef, factors, rest)(x).astype(jnp.float32))

    x = jax.ShapeDtypeStruct((1, rows, layer.in_features), jnp.bfloat16)
    return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(factors, x).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("mode", WEIGHT_ONLY)
def test_a_weight_only_linear_with_loras_trains_in_the_bf16_linears_memory(mode):
    """LoRA training on an INT8 base (all rows at once): the gradient's temporaries over 84,480 tokens are the bf16
    Linear's. (Keeping the per-channel scale on a float32 output, with the LoRA updates as a second float32 array
    over chunks, held 8.8 GiB more in one real-size block's backward; see `quantized_linear`.)"""
    layer = _quantized(SCHEME_CASES[mode], dtype=jnp.bfloat16, lora_dtype=jnp.float32, chunk_rows=None,
                       in_features=512, out_features=1536, rank=16)  # all rows at once, as training sets
    quantized, bf16 = _gradient_temp_bytes(layer, 84480), _gradient_temp_bytes(_bf16_twin(layer), 84480)
    assert quantized <= bf16 + 2 * 1536 * 512 * 4, (quantized / 2**20, bf16 / 2**20)  # the converted kernel's room


def test_lora_training_multiplies_all_rows_at_once_on_a_weight_only_base_and_in_chunks_on_an_fp8_one():
    from longcat_jax.models.dit.quantized_linear import quantize_linears
    from longcat_jax.training.config import LoRAConfig
    from longcat_jax.training.trainable_lora import attach_trainable_lora
    from tests.training.synthetic import small_dit

    for mode, rows in (("int8", None), ("fp8-weight-only", None), ("fp8", LORA_CHUNK_ROWS)):
        dit = quantize_linears(small_dit(), mode)
        targets = attach_trainable_lora(dit, LoRAConfig(rank=2, alpha=2, targets=("all",)), seed=0)
        quantized = [m for _, m in nnx.iter_modules(dit) if isinstance(m, QuantizedLinear)]
        assert targets and quantized and {m.lora_chunk_rows for m in quantized} == {rows}, mode
