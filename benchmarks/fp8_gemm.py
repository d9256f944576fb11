"""The DiT's GEMMs in bf16, FP8 and weight-only INT8/FP8: time, TFLOP/s, error, and what XLA compiled.

For each GEMM shape of one DiT block at 168,960 tokens (the 720p refinement with frames doubled) it times, one
jitted function each, written exactly as `longcat_jax.quantization.matmul` writes them:

  bf16                 x @ w, bf16 operands, float32 accumulation, bf16 output (the unquantized Linear)
  fp8 per-token        activations quantized to e4m3 inside the jit, one scale per token; e4m3 weights with
                       per-channel scales passed in; dot_general on the two e4m3 operands (float32 output)
  fp8 per-token bf16   the same with a bf16 GEMM output (half the bytes to write; the error changed by under 1%
                       in the CPU measurement)
  fp8 per-tensor       one activation scale for the whole tensor
  fp8 scaled operands  per-tensor activation scale written as XLA's FP8 pattern, dot(convert(xq) * scale,
                       convert(wq)), so cuBLASLt can take the scale itself and write bf16; the per-channel weight
                       scale follows on the bf16 output
  fp8 in-jit weights   bf16 weights passed in and quantized inside the jit too (the issue's probe form), to tell
                       whether passing e4m3 weights in changes what XLA does
  int8 weight-only     INT8 weights converted to bf16 inside the matmul, per-channel scale on the output
  fp8 weight-only      e4m3 weights converted the same way (for GPUs without FP8 tensor cores)

and prints the median time, TFLOP/s (2*M*K*N / time), the speed-up over bf16, the relative L2 error against the
bf16 GEMM, and whether the compiled HLO calls cuBLASLt's FP8 GEMM (`__cublas$lt$matmul$f8`).

    python benchmarks/fp8_gemm.py                       # H100/H200: all shapes, all variants
    python benchmarks/fp8_gemm.py --shapes qkv --iters 20
    python benchmarks/fp8_gemm.py --small               # a quick functional run on any machine (CPU included)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from longcat_jax.quantization import CUBLAS_FP8_GEMM, FP8_E4M3, INT8, quantize_kernel
from longcat_jax.quantization.compile_options import FP8_GPU_COMPILER_OPTIONS
from longcat_jax.quantization.matmul import fp8_dot, quantize_activations, weight_only_dot

TOKENS = 168_960
TEXT_TOKENS = 512
# name -> (M, K, N) of one block's GEMMs at TOKENS video tokens (hidden 4096, FFN 11008, text 512 tokens).
SHAPES = {
    "qkv": (TOKENS, 4096, 12288),
    "attn_proj": (TOKENS, 4096, 4096),
    "cross_q": (TOKENS, 4096, 4096),
    "cross_kv": (TEXT_TOKENS, 4096, 8192),
    "cross_proj": (TOKENS, 4096, 4096),
    "ffn_w1_w3": (TOKENS, 4096, 11008),
    "ffn_w2": (TOKENS, 11008, 4096),
}
SMALL_SHAPES = {name: (min(m, 512), min(k, 256), min(n, 384)) for name, (m, k, n) in SHAPES.items()}


def _variants():
    """name -> (function, which operands it takes: 'bf16' | 'fp8' | 'int8')."""
    def bf16(x, w):
        return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(jnp.bfloat16)

    def fp8(scaling, gemm_dtype):
        def run(x, qkernel, qscale):
            return fp8_dot(x, qkernel, qscale, scaling=scaling, gemm_dtype=gemm_dtype).astype(jnp.bfloat16)
        return run

    def fp8_in_jit(x, w):
        qkernel, qscale = quantize_kernel(w, FP8_E4M3)
        return fp8_dot(x, qkernel, qscale).astype(jnp.bfloat16)

    def scaled_operands(x, qkernel, qscale):
        xq, x_scale = quantize_activations(x, "per_tensor")
        acc = jax.lax.dot_general(xq.astype(jnp.bfloat16) * x_scale.astype(jnp.bfloat16), qkernel.astype(jnp.bfloat16),
                                  (((1,), (1,)), ((), ())), preferred_element_type=jnp.bfloat16)  # [M, N]
        return acc * qscale.astype(jnp.bfloat16)

    def weight_only(x, qkernel, qscale):
        return weight_only_dot(x, qkernel, qscale).astype(jnp.bfloat16)

    return {
        "bf16": (bf16, "bf16"),
        "fp8 per-token": (fp8("per_token", jnp.float32), "fp8"),
        "fp8 per-token bf16": (fp8("per_token", jnp.bfloat16), "fp8"),
        "fp8 per-tensor": (fp8("per_tensor", jnp.float32), "fp8"),
        "fp8 scaled operands": (scaled_operands, "fp8"),
        "fp8 in-jit weights": (fp8_in_jit, "bf16"),
        "int8 weight-only": (weight_only, "int8"),
        "fp8 weight-only": (weight_only, "fp8"),
    }


def _median_seconds(fn, args, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@jax.jit
def _rel_l2(got, want):
    got, want = got.astype(jnp.float32), want.astype(jnp.float32)
    return jnp.linalg.norm(got - want) / jnp.maximum(jnp.linalg.norm(want), 1e-30)


def run_shape(name: str, shape: tuple[int, int, int], variants: list[str], warmup: int, iters: int) -> list[dict]:
    m, k, n = shape
    keys = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(keys[0], (m, k), jnp.bfloat16)
    w = (jax.random.normal(keys[1], (k, n), jnp.float32) / np.sqrt(k)).astype(jnp.bfloat16)
    operands = {"bf16": (x, w)}
    for label, fmt in (("fp8", FP8_E4M3), ("int8", INT8)):
        qkernel, qscale = jax.jit(quantize_kernel, static_argnums=1)(w, fmt)
        operands[label] = (x, qkernel, qscale)
    table = _variants()
    reference = None
    rows = []
    for variant in variants:
        fn, kind = table[variant]
        args = operands[kind]
        print(f"  {name} {variant}: compiling", flush=True)
        start = time.perf_counter()
        # FP8 programs on a GPU compile with XLA's Triton GEMMs off, as the DiT's do (`compile_options`).
        fp8_gpu = variant.startswith("fp8") and "weight-only" not in variant and jax.default_backend() == "gpu"
        compiled = jax.jit(fn, compiler_options=FP8_GPU_COMPILER_OPTIONS if fp8_gpu else None).lower(*args).compile()
        compile_s = time.perf_counter() - start
        hlo = compiled.as_text()
        seconds = _median_seconds(compiled, args, warmup, iters)
        out = compiled(*args)
        if variant == "bf16":
            reference = out
        rows.append({
            "shape": name, "mkn": [m, k, n], "variant": variant, "ms": seconds * 1e3, "compile_s": compile_s,
            "tflops": 2 * m * k * n / seconds / 1e12, "fp8_gemm_in_hlo": CUBLAS_FP8_GEMM in hlo,
            "rel_l2_vs_bf16": float(_rel_l2(out, reference)) if reference is not None else float("nan"),
        })
        del out
        print(f"  {name} {variant}: {seconds * 1e3:.2f} ms (compiled in {compile_s:.1f} s)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of " + ", ".join(SHAPES))
    parser.add_argument("--variants", default=",".join(_variants()), help="comma-separated subset of the variants")
    parser.add_argument("--small", action="store_true", help="small shapes: a functional check on any device")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    shapes = SMALL_SHAPES if args.small else SHAPES
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in _variants()] + [s for s in args.shapes.split(",") if s not in shapes]
    if unknown:
        parser.error(f"unknown shape(s)/variant(s) {unknown}")
    if "bf16" not in variants:
        variants.insert(0, "bf16")  # the reference of the speed-up and error columns
    device = jax.devices()[0]
    print(f"{device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
    rows = []
    for name in args.shapes.split(","):
        rows += run_shape(name, shapes[name], variants, args.warmup, args.iters)
    print(f"\n{'shape':<11} {'M x K x N':<22} {'variant':<20} {'ms':>8} {'TFLOP/s':>8} {'vs bf16':>7} "
          f"{'rel L2':>8} {'cuBLASLt f8':>11} {'compile s':>9}")
    for row in rows:
        base = next(r for r in rows if r["shape"] == row["shape"] and r["variant"] == "bf16")
        mkn = "x".join(str(v) for v in row["mkn"])
        print(f"{row['shape']:<11} {mkn:<22} {row['variant']:<20} {row['ms']:>8.2f} {row['tflops']:>8.1f} "
              f"{base['ms'] / row['ms']:>7.2f} {row['rel_l2_vs_bf16']:>8.1e} {str(row['fp8_gemm_in_hlo']):>11} "
              f"{row['compile_s']:>9.1f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
