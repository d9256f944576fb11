"""How XLA compiles one DiT GEMM (168,960 or 16,384 x 4096 x 12288) in bf16, FP8 and INT8 weight-only forms, each
variant in its own subprocess under a time limit, because some FP8 forms do not finish compiling.

Variants: bf16; e4m3_arg (e4m3 weights passed in, activations quantized per token inside the jit); u8_bitcast
(weights passed as uint8 and bitcast to e4m3 inside); quant_inside (bf16 weights quantized inside the jit too);
int8_wo (INT8 weight-only, converted inside the matmul); a `_noautotune` suffix runs a variant with
XLA_FLAGS=--xla_gpu_autotune_level=0, `_notriton` with --xla_gpu_enable_triton_gemm=false.
Prints, per variant: compile seconds, median run time of 10, TFLOP/s, and whether the compiled HLO calls
cuBLASLt's FP8 GEMM; "TIMEOUT" when compiling and running took longer than --timeout.

    python benchmarks/gemm_compile_probe.py                          # the BENCHMARKS.md table (H200)
    python benchmarks/gemm_compile_probe.py --variants e4m3_arg_notriton,quant_inside_notriton --rows 168960
"""
import argparse
import os
import subprocess
import sys
import time

VARIANTS = ["bf16", "e4m3_arg", "u8_bitcast", "quant_inside", "int8_wo", "e4m3_arg_noautotune"]
FLAGS = {"_noautotune": "--xla_gpu_autotune_level=0", "_notriton": "--xla_gpu_enable_triton_gemm=false"}

if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rows", default="16384,168960", help="GEMM rows (tokens), comma-separated")
    parser.add_argument("--timeout", type=float, default=70.0, help="seconds per variant, compile included")
    args = parser.parse_args()
    for rows in args.rows.split(","):
        for variant in args.variants.split(","):
            start = time.perf_counter()
            try:
                done = subprocess.run([sys.executable, __file__, variant, rows], capture_output=True, text=True,
                                      timeout=args.timeout)
                lines = (done.stdout + done.stderr).splitlines()
                out = [line for line in lines if line.startswith("RES") or "Error" in line][-3:]
            except subprocess.TimeoutExpired:
                out = [f"TIMEOUT {args.timeout:g}s"]
            print(rows, variant, f"{time.perf_counter() - start:.0f}s", out, flush=True)
    sys.exit()
v, M = sys.argv[1], int(sys.argv[2])
for suffix, flag in FLAGS.items():
    if v.endswith(suffix):
        os.environ["XLA_FLAGS"] = flag
        v = v.removesuffix(suffix)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

K, N = 4096, 12288
x = jax.random.normal(jax.random.key(0), (M, K), jnp.bfloat16)  # [M, K] activations
w = jax.random.normal(jax.random.key(1), (N, K), jnp.float32) / 64  # [N, K] weights, one row per output channel
s = jnp.max(jnp.abs(w), axis=1) / 448  # per-channel e4m3 scales
dims = (((1,), (1,)), ((), ()))


def quantize_rows(x):
    """x [M, K] -> (e4m3 x / scale, scale [M, 1]): one scale per token, inside the jit."""
    scale = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=-1, keepdims=True) / 448
    return (x.astype(jnp.float32) / scale).astype(jnp.float8_e4m3fn), scale


def fp8_gemm(x, wq, scale):
    xq, x_scale = quantize_rows(x)
    return (lax.dot_general(xq, wq, dims, preferred_element_type=jnp.float32) * x_scale * scale).astype(jnp.bfloat16)


if v == "bf16":
    def f(x, w):
        return lax.dot_general(x, w, dims, preferred_element_type=jnp.float32).astype(jnp.bfloat16)
    args = (x, w.astype(jnp.bfloat16))
elif v == "e4m3_arg":
    f = fp8_gemm
    args = (x, (w / s[:, None]).astype(jnp.float8_e4m3fn), s)
elif v == "u8_bitcast":
    def f(x, wb, scale):
        return fp8_gemm(x, lax.bitcast_convert_type(wb, jnp.float8_e4m3fn), scale)
    args = (x, lax.bitcast_convert_type((w / s[:, None]).astype(jnp.float8_e4m3fn), jnp.uint8), s)
elif v == "quant_inside":
    def f(x, w):
        scale = jnp.max(jnp.abs(w), axis=1) / 448
        return fp8_gemm(x, (w / scale[:, None]).astype(jnp.float8_e4m3fn), scale)
    args = (x, w.astype(jnp.bfloat16))
elif v == "int8_wo":
    def f(x, w8, s8):
        return (lax.dot_general(x, w8.astype(jnp.bfloat16), dims, preferred_element_type=jnp.float32) * s8
                ).astype(jnp.bfloat16)
    s8 = jnp.max(jnp.abs(w), axis=1) / 127
    args = (x, jnp.round(w / s8[:, None]).astype(jnp.int8), s8)
else:
    sys.exit(f"unknown variant {v!r}; choose from {VARIANTS} (with _noautotune or _notriton)")
start = time.perf_counter()
compiled = jax.jit(f).lower(*args).compile()
compile_s = time.perf_counter() - start
uses_f8_gemm = "__cublas$lt$matmul$f8" in compiled.as_text()
compiled(*args).block_until_ready()
times = []
for _ in range(10):
    start = time.perf_counter()
    compiled(*args).block_until_ready()
    times.append(time.perf_counter() - start)
ms = float(np.median(times)) * 1e3
print(f"RES compile {compile_s:.1f}s run {ms:.2f} ms {2 * M * K * N / ms / 1e9:.0f} TFLOP/s f8gemm={uses_f8_gemm}",
      flush=True)
