"""cuDNN's FP8 flash attention against its bf16 one at the DiT's dense self-attention shapes: time and error.

Where the time of the FP8 480p step goes (BENCHMARKS.md, "Quantized DiT step"): dense attention is about 3.6 s of
the 6.9 s bf16 step, and FP8 GEMMs only speed up the rest, so the FP8 step stays at about 0.84 of bf16 unless the
attention gets faster too. `longcat_jax.quantization.attention.fp8_attention` is that attention
(`--quantize fp8-attention`): e4m3 q, k, v with per-tensor scales, the softmax probabilities in e4m3, the output
in bf16 (its own cuDNN call) or in e4m3 (JAX's `jax._src.cudnn.fused_attention_stablehlo.dot_product_attention(...,
use_fp8=True)`). This script measures both against bf16 cuDNN, and checks each against the module's float32
emulation of the same roundings.

Per case:
- q, k, v: `bsa_inputs.structured_qkv` (a video-like token field through the DiT's LayerNorm, qkv projection,
  q/k RMSNorm and 3D RoPE), 32 heads of 128, bf16, tiled over the batch;
- bf16: `jax.nn.dot_product_attention(implementation="cudnn")`, what `models.dit.attention.dense_attention` runs;
- fp8_bf16out / fp8_e4m3out: `fp8_attention(q, k, v, output=...)`, quantization and descaling included: timed whole;
- error: relative L2 of each output against float32 attention (XLA, highest precision) over every
  `--check-stride`-th query token; and each FP8 output against `emulated_fp8_attention` (the same roundings in
  float32 on the GPU) over the same tokens.

    python3 benchmarks/fp8_attention.py                      # 480p CFG batch (2 x 37,440 tokens)
    python3 benchmarks/fp8_attention.py --cases t2v480p_cfg,refine84k
"""

from __future__ import annotations

import argparse
import functools
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
    from longcat_jax.quantization.attention import OUTPUTS, emulated_fp8_attention, fp8_attention

    case = CASES[name]
    grid, batch = case["grid"], case["batch"]
    q, k, v = structured_qkv(jax.random.key(0), grid, StructuredInputSpec())
    q, k, v = (jnp.tile(x, (batch, 1, 1, 1)) for x in (q, k, v))  # [B, N, H, D]
    bf16 = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"))
    fp8 = {output: jax.jit(functools.partial(fp8_attention, output=output)) for output in OUTPUTS}
    result = {"case": name, "tokens": math.prod(grid), "batch": batch, "device": jax.devices()[0].device_kind}
    flops = 4 * batch * q.shape[2] * q.shape[1] ** 2 * q.shape[3]
    for label, fn in (("bf16", bf16), *((f"fp8_{output}", fn) for output, fn in fp8.items())):
        try:
            result[f"{label}_ms"] = 1e3 * _median_seconds(fn, (q, k, v), warmup=1, iters=iters)
        except Exception as error:  # noqa: BLE001 - a variant cuDNN refuses is reported, the others still run
            result[f"{label}_error"] = f"{type(error).__name__}: {str(error)[:400]}"
            continue
        result[f"{label}_tflops"] = flops / result[f"{label}_ms"] / 1e9

    @jax.jit
    def reference(q, k, v):  # float32 attention of every stride-th query token of the first batch entry
        q = q[:1, ::stride].astype(jnp.float32)
        return jax.nn.dot_product_attention(q, k[:1].astype(jnp.float32), v[:1].astype(jnp.float32),
                                            implementation="xla")

    with jax.default_matmul_precision("highest"):
        want = reference(q, k, v)
    subset = (q[:1, ::stride], k[:1], v[:1])  # the emulation materialises [1, H, Sq / stride, Sk] scores
    for label, fn in (("bf16", bf16), *((f"fp8_{output}", fn) for output, fn in fp8.items())):
        if f"{label}_ms" not in result:
            continue
        got = fn(q, k, v)[:1, ::stride]
        result[f"{label}_rel_l2"] = float(rel_l2(got.astype(jnp.float32), want))
        result[f"{label}_finite"] = bool(jnp.all(jnp.isfinite(got)))
        if label != "bf16":
            output = label.removeprefix("fp8_")
            emulated = jax.jit(functools.partial(emulated_fp8_attention, output=output))(*subset)
            result[f"{label}_vs_emulated_rel_l2"] = float(rel_l2(fn(*subset).astype(jnp.float32),
                                                                 emulated.astype(jnp.float32)))
            result[f"{label}_emulated_rel_l2"] = float(rel_l2(emulated.astype(jnp.float32), want))
            result[f"{label}_speedup"] = result["bf16_ms"] / result[f"{label}_ms"]
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
    print("per case: one JSON line, then per variant: ms, TFLOP/s, speed-up over bf16, rel L2 vs float32 "
          "(and vs the float32 emulation of its roundings)")
    for name in cases:
        row = run_case(name, args.iters, args.check_stride)
        print(json.dumps(row), flush=True)
        for label in ("bf16", "fp8_bfloat16", "fp8_e4m3"):
            if f"{label}_ms" not in row:
                print(f"{name:<13} {label:<13} failed: {row.get(label + '_error')}", flush=True)
                continue
            extra = (f"  {row[label + '_speedup']:.2f}x  vs emulation {row[label + '_vs_emulated_rel_l2']:.2e}"
                     if label != "bf16" else "")
            print(f"{name:<13} {label:<13} {row[label + '_ms']:8.2f} ms {row[label + '_tflops']:6.0f} TFLOP/s  "
                  f"rel L2 {row[label + '_rel_l2']:.2e}{extra}", flush=True)


if __name__ == "__main__":
    main()
