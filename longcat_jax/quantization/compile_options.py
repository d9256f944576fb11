"""`quantized_jit`: `jax.jit` whose XLA options follow the arguments: FP8 weights on a GPU compile without Triton GEMMs.

Why (measured on an H200, jax 0.11.2, `benchmarks/gemm_compile_probe.py`, 168,960 x 4096 x 12288): with XLA's
default options (Triton GEMM fusions on) a `dot_general` on e4m3 operands did not finish compiling within 75 s;
with `xla_gpu_enable_triton_gemm=False` the same program compiled in 0.4 s to cuBLASLt's FP8 GEMM
(`__cublas$lt$matmul$f8`) and ran in 15.6 ms against 27.2 ms for the bf16 GEMM. So every
compiled function that runs FP8-quantized Linears is compiled with that option on GPUs; bf16 programs and the CPU
keep XLA's defaults.

The choice is made per call from the arguments' dtypes (an FP8-quantized DiT's state holds e4m3 kernels), so one
wrapped function serves bf16, INT8 and FP8 models alike, each compiled with its own options.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# XLA debug options for programs with FP8 GEMMs on a GPU (see the module docstring for the measurement).
FP8_GPU_COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def holds_fp8(tree: Any) -> bool:
    """True when any array leaf of `tree` is float8 e4m3 (an FP8-quantized kernel)."""
    return any(getattr(leaf, "dtype", None) == jnp.float8_e4m3fn for leaf in jax.tree.leaves(tree))


def compiler_options_for(tree: Any, backend: str | None = None) -> dict[str, Any] | None:
    """The XLA options a program over `tree` needs: FP8_GPU_COMPILER_OPTIONS for FP8 leaves on a GPU, else None."""
    if (backend or jax.default_backend()) != "gpu" or not holds_fp8(tree):
        return None
    return dict(FP8_GPU_COMPILER_OPTIONS)


def quantized_jit(fun: Callable | None = None, **jit_kwargs) -> Callable:
    """`jax.jit(fun, **jit_kwargs)`, compiled with FP8_GPU_COMPILER_OPTIONS when a call's arguments hold FP8 arrays
    on a GPU. Usable as `@quantized_jit` or `@functools.partial(quantized_jit, static_argnames=...)`."""
    if fun is None:
        return functools.partial(quantized_jit, **jit_kwargs)
    default = jax.jit(fun, **jit_kwargs)
    fp8_gpu = jax.jit(fun, compiler_options=FP8_GPU_COMPILER_OPTIONS, **jit_kwargs)

    @functools.wraps(fun)
    def call(*args, **kwargs):
        compiled = fp8_gpu if compiler_options_for((args, kwargs)) else default
        return compiled(*args, **kwargs)

    call.default_jit = default
    call.fp8_gpu_jit = fp8_gpu
    # What jax.jit's wrappers offer for counting compilations (tests check that a step compiles once per shape).
    call._cache_size = lambda: default._cache_size() + fp8_gpu._cache_size()
    return call
