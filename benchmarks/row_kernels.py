"""The FP8 DiT's two Pallas row kernels against XLA's form of the same arithmetic, at the 480p CFG batch's shapes.

- `swiglu_quantize` (`longcat_jax.quantization.swiglu_kernel`): the FFN's hidden activation, silu(gate) * up from
  the w1/w3 FP8 GEMMs' bf16 outputs [2 x 37,440, 11,008], quantized per token to e4m3; XLA's form is
  `quantization.swiglu.quantized_hidden_xla` (two fusions, each recomputing the SwiGLU).
- `modulated_quantize` (`longcat_jax.quantization.modulated_kernel`): a GEMM input, LayerNorm(x) * (1 + scale) +
  shift of bf16 x [2 x 37,440, 4,096] with one modulation per latent frame (1,560 tokens), quantized per token;
  XLA's form is the same arithmetic in jnp.

Each kernel runs with every `--warps` value (a program's warps; one token row a program). Times are the median of
`--iters` calls after a compiling one; GB/s counts the bytes each must move (inputs read once, outputs written once).

    python3 benchmarks/row_kernels.py
    python3 benchmarks/row_kernels.py --warps 4,8,16,32 --iters 20
"""

from __future__ import annotations

import argparse
import statistics
import time

ROWS, FFN, HIDDEN, PER_FRAME = 2 * 37440, 11008, 4096, 1560


def _median_ms(fn, args, iters: int) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _row(name: str, ms: float, moved: int) -> str:
    return f"| {name} | {ms:.3f} | {moved / ms / 1e6:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warps", default="4,8,16", help="comma-separated warps per program to try")
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()

    import functools

    import jax
    import jax.numpy as jnp

    from longcat_jax.quantization.matmul import quantize_activations
    from longcat_jax.quantization.modulated_kernel import modulated_quantize
    from longcat_jax.quantization.swiglu import quantized_hidden_xla
    from longcat_jax.quantization.swiglu_kernel import swiglu_quantize

    keys = jax.random.split(jax.random.key(0), 8)
    gate = (jax.random.normal(keys[0], (ROWS, FFN)) * 40).astype(jnp.bfloat16)
    up = (jax.random.normal(keys[1], (ROWS, FFN)) * 40).astype(jnp.bfloat16)
    x_scale = jax.random.uniform(keys[2], (ROWS, 1), minval=1e-3, maxval=2e-2)
    w1_scale, w3_scale = (jax.random.uniform(k, (FFN,), minval=1e-3, maxval=3e-3) for k in keys[3:5])
    swiglu_args = (gate, up, x_scale, w1_scale, w3_scale)
    swiglu_bytes = 2 * ROWS * FFN * 2 + ROWS * FFN + ROWS * 8  # two bf16 reads, one e4m3 write, the scales

    x = jax.random.normal(keys[5], (ROWS, HIDDEN)).astype(jnp.bfloat16)
    multiplier = 1.0 + 0.5 * jax.random.normal(keys[6], (ROWS // PER_FRAME, HIDDEN))
    offset = 0.5 * jax.random.normal(keys[7], (ROWS // PER_FRAME, HIDDEN))
    modulated_args = (x, multiplier, offset)
    modulated_bytes = ROWS * HIDDEN * 2 + ROWS * HIDDEN + ROWS * 4

    def modulated_xla(x, multiplier, offset):
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        centered = xf - mean
        normed = centered * jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + 1e-6)
        rows = normed.reshape(-1, PER_FRAME, HIDDEN) * multiplier[:, None] + offset[:, None]
        return quantize_activations(rows.reshape(ROWS, HIDDEN))

    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, median of {args.iters} calls")
    print("| kernel | ms | GB/s moved |\n| --- | --- | --- |")
    print(_row("swiglu: XLA form", _median_ms(jax.jit(quantized_hidden_xla), swiglu_args, args.iters), swiglu_bytes))
    for warps in (int(w) for w in args.warps.split(",")):
        fn = functools.partial(swiglu_quantize, num_warps=warps)
        print(_row(f"swiglu_quantize, {warps} warps", _median_ms(fn, swiglu_args, args.iters), swiglu_bytes))
    print(_row("modulated: XLA form", _median_ms(jax.jit(modulated_xla), modulated_args, args.iters), modulated_bytes))
    for warps in (int(w) for w in args.warps.split(",")):
        fn = functools.partial(modulated_quantize, rows_per_group=PER_FRAME, eps=1e-6, num_warps=warps)
        print(_row(f"modulated_quantize, {warps} warps", _median_ms(fn, modulated_args, args.iters), modulated_bytes))


if __name__ == "__main__":
    main()
