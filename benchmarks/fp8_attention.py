"""cuDNN's FP8 flash attention against its bf16 one at the DiT's dense self-attention shapes: time and error.

Where the time of the FP8 480p step goes (BENCHMARKS.md, "Quantized DiT step"): dense attention is about 3.6 s of
the 6.9 s bf16 step, and FP8 GEMMs only speed up the rest, so the FP8 step stays at about 0.84 of bf16 unless the
attention gets faster too. `longcat_jax.quantization.attention.fp8_attention` is that attention
(`--quantize fp8-attention`): JAX's cuDNN FP8 call (`jax._src.cudnn.fused_attention_stablehlo.dot_product_attention(
..., use_fp8=True)`: e4m3 q, k, v with per-tensor scales, the softmax probabilities in e4m3, an e4m3 output). This
script measures it against bf16 cuDNN, and checks it against the module's float32 emulation of the same roundings.

Per case:
- q, k, v: `bsa_inputs.structured_qkv` (a video-like token field through the DiT's LayerNorm, qkv projection,
  q/k RMSNorm and 3D RoPE), 32 heads of 128, bf16, tiled over the batch;
- bf16: `jax.nn.dot_product_attention(implementation="cudnn")`, what `models.dit.attention.dense_attention` runs;
- fp8: `fp8_attention(q, k, v)`, quantization and descaling included: timed whole;
- error: relative L2 of each output against float32 attention (XLA, highest precision) over every
  `--check-stride`-th query token; and of the FP8 output and of `emulated_fp8_attention` (the same roundings in
  float32) against float32 attention and against each other over the same tokens.

    python3 benchmarks/fp8_attention.py                      # 480p CFG batch (2 x 37,440 tokens)
    python3 benchmarks/fp8_attention.py --cases t2v480p_cfg,refine84k
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = {
    "t2v480p_cfg": dict(grid=(24, 30, 52), batch=2),  # 480p, 93 frames, the guided batch
    "refine84k": dict(grid=(24, 44, 80), batch=1),  # 720p spatial refinement without BSA
}


def run_case(name: str, iters: int, stride: int) -> dict:
    import jax
    import jax.numpy as jnp
    from bsa_inputs import StructuredInputSpec, structured_qkv
    from fp8_gemm import _median_seconds  # the sibling benchmark's timer: one warm-up (compiling) call, then a median

    from longcat_jax.metrics import rel_l2
    from longcat_jax.quantization.attention import emulated_fp8_attention, fp8_attention

    case = CASES[name]
    grid, batch = case["grid"], case["batch"]
    q, k, v = structured_qkv(jax.random.key(0), grid, StructuredInputSpec())
    q, k, v = (jnp.tile(x, (batch, 1, 1, 1)) for x in (q, k, v))  # [B, N, H, D]
    bf16 = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"))
    fp8 = jax.jit(fp8_attention)
    result = {"case": name, "tokens": math.prod(grid), "batch": batch, "device": jax.devices()[0].device_kind}
    flops = 4 * batch * q.shape[2] * q.shape[1] ** 2 * q.shape[3]
    for label, fn in (("bf16", bf16), ("fp8", fp8)):
        result[f"{label}_ms"] = 1e3 * _median_seconds(fn, (q, k, v), warmup=1, iters=iters)
        result[f"{label}_tflops"] = flops / result[f"{label}_ms"] / 1e9
    result["speedup"] = result["bf16_ms"] / result["fp8_ms"]

    @jax.jit
    def reference(q, k, v):  # float32 attention of every stride-th query token of the first batch entry
        q = q[:1, ::stride].astype(jnp.float32)
        return jax.nn.dot_product_attention(q, k[:1].astype(jnp.float32), v[:1].astype(jnp.float32),
                                            implementation="xla")

    with jax.default_matmul_precision("highest"):
        want = reference(q, k, v)
    for label, fn in (("bf16", bf16), ("fp8", fp8)):
        got = fn(q, k, v)[:1, ::stride].astype(jnp.float32)
        result[f"{label}_rel_l2"] = float(rel_l2(got, want))
        result[f"{label}_finite"] = bool(jnp.all(jnp.isfinite(got)))
    subset = (q[:1, ::stride], k[:1], v[:1])  # the emulation materialises [1, H, Sq / stride, Sk] scores
    emulated = jax.jit(emulated_fp8_attention)(*subset).astype(jnp.float32)
    result["emulated_rel_l2"] = float(rel_l2(emulated, want))
    result["fp8_vs_emulated_rel_l2"] = float(rel_l2(fp8(*subset).astype(jnp.float32), emulated))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="t2v480p_cfg", help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument("--iters", type=int, default=10, help="timed calls after the compiling one")
    parser.add_argument("--check-stride", type=int, default=64, help="query tokens checked: every N-th")
    args = parser.parse_args()
    cases = args.cases.split(",")
    unknown = [case for case in cases if case not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    import jax

    if jax.default_backend() != "gpu":
        parser.error("cuDNN attention needs an NVIDIA GPU (FP8: compute capability 8.9 or newer)")
    print("case          tokens batch  bf16 ms  fp8 ms  fp8/bf16 speed-up  bf16 TFLOP/s  fp8 TFLOP/s  "
          "rel L2 vs float32: bf16 / fp8 / emulated fp8; fp8 vs emulated")
    for name in cases:
        row = run_case(name, args.iters, args.check_stride)
        print(json.dumps(row), flush=True)
        print(f"{name:<13} {row['tokens']:>6} {row['batch']:>5} {row['bf16_ms']:>8.2f} {row['fp8_ms']:>7.2f} "
              f"{row['speedup']:>18.2f}x {row['bf16_tflops']:>13.0f} {row['fp8_tflops']:>12.0f}  "
              f"{row['bf16_rel_l2']:.2e} / {row['fp8_rel_l2']:.2e} / {row['emulated_rel_l2']:.2e}; "
              f"{row['fp8_vs_emulated_rel_l2']:.2e}", flush=True)


if __name__ == "__main__":
    main()
