"""quantized_jit: which programs get the FP8 compile options, and that the wrapped function computes the same."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longcat_jax.quantization import SCHEMES, compiler_options_for, quantize_kernel, quantized_jit
from longcat_jax.quantization.compile_options import FP8_GPU_COMPILER_OPTIONS
from longcat_jax.quantization.matmul import quantized_dot


def _weights(mode):
    w = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    return quantize_kernel(w, SCHEMES[mode].weight)


def test_fp8_leaves_on_a_gpu_get_the_fp8_options():
    qkernel, qscale = _weights("fp8")
    state = {"block": {"kernel": qkernel, "scale": qscale}}
    assert compiler_options_for(state, backend="gpu") == FP8_GPU_COMPILER_OPTIONS
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    assert compiler_options_for(abstract, backend="gpu") == FP8_GPU_COMPILER_OPTIONS


@pytest.mark.parametrize("mode", ["int8", "none"])
def test_other_weights_or_the_cpu_keep_xla_defaults(mode):
    if mode == "none":
        state = {"kernel": jnp.ones((4, 4), jnp.bfloat16)}
    else:
        qkernel, qscale = _weights(mode)
        state = {"kernel": qkernel, "scale": qscale}
    assert compiler_options_for(state, backend="gpu") is None
    fp8_kernel, _ = _weights("fp8")
    assert compiler_options_for({"kernel": fp8_kernel}, backend="cpu") is None


def test_wrapped_function_matches_plain_jit_and_keeps_static_args():
    qkernel, qscale = _weights("fp8")
    x = jax.random.normal(jax.random.key(0), (8, qkernel.shape[1]), jnp.bfloat16)

    def linear(x, qkernel, qscale, *, scheme):
        return quantized_dot(x, qkernel, qscale, SCHEMES[scheme])

    wrapped = quantized_jit(linear, static_argnames=("scheme",))
    want = jax.jit(linear, static_argnames=("scheme",))(x, qkernel, qscale, scheme="fp8")
    np.testing.assert_array_equal(np.asarray(wrapped(x, qkernel, qscale, scheme="fp8")), np.asarray(want))
