"""Time our BSA backward kernels side by side on one GPU: the Triton-lowered one and Mosaic GPU (Hopper) variants.

The backward alone (dq, dk, dv from q, k, v, out, lse and a random cotangent), on chunk-ordered random bf16 q, k, v
[1, S, 32, 128] with the top-k selection of the given sparsities and the Mosaic forward's out and lse; effective
TFLOP/s count the selected blocks only, 2.5 x 4*D*64*64 per pair (the flash-attention convention, as in
`bsa_attention.py`). Every variant's dq, dk and dv are checked against the first variant's (the largest relative
L2 of the three) before it is timed. Variant names: triton, mosaic (the default `MosaicBackwardConfig`: blocks
handed to the CTAs longest list first, each step's accumulating product deferred, a list entry's gathers on one
barrier), mosaic block order
(`longest_first=False`), mosaic waited (`deferred_accumulate=False`: each step ends waiting for its product),
mosaic barrier per buffer (`one_gather_barrier=False`: one barrier per gathered buffer, each waited for).

    python3 benchmarks/bsa_backward_kernels.py [--sizes 24x44x80,48x44x80] [--sparsities 0.875,0.9375,0.96875]
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from bsa_attention import Timer, rel_l2  # noqa: E402  (this script's siblings)
from bsa_forward_kernels import parse_variant_args  # noqa: E402

from kernels import BSAConfigError, BSAParams, KernelConfig, MosaicBackwardConfig, select_blocks  # noqa: E402
from kernels.sparse_attention import sparse_attention_backward, sparse_attention_with_lse  # noqa: E402

VARIANTS = {
    "triton": KernelConfig(backward="triton"),
    "mosaic": KernelConfig(backward="mosaic"),
    "mosaic block order": KernelConfig(backward="mosaic", mosaic_backward=MosaicBackwardConfig(longest_first=False)),
    "mosaic waited": KernelConfig(backward="mosaic", mosaic_backward=MosaicBackwardConfig(deferred_accumulate=False)),
    "mosaic barrier per buffer": KernelConfig(backward="mosaic",
                                              mosaic_backward=MosaicBackwardConfig(one_gather_barrier=False)),
}


def main() -> None:
    args, names = parse_variant_args(__doc__, VARIANTS)
    print("| grid | sparsity | backward | ms | effective TFLOP/s | rel. L2 vs first (max of dq, dk, dv) |")
    print("|---|---|---|---|---|---|")
    forward_config = KernelConfig()
    for size in args.sizes.split(","):
        latent = tuple(int(n) for n in size.split("x"))
        shape = (1, math.prod(latent), 32, 128)  # [B, S, H, D] chunk order
        q, k, v, do = (jax.random.normal(key, shape, jnp.bfloat16) for key in jax.random.split(jax.random.key(0), 4))
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            params = BSAParams(sparsity=sparsity)
            indices, counts = jax.jit(lambda a, b, p=params: select_blocks(a, b, p, backend="pallas"))(q, k)
            out, lse = jax.jit(lambda *a: sparse_attention_with_lse(*a, 64, 64, forward_config))(q, k, v, indices, counts)
            flops = 2.5 * 4 * shape[-1] * 64 * 64 * int(jnp.sum(counts))
            expected = None
            for name in names:
                config = VARIANTS[name]
                kernel = jax.jit(lambda *a, c=config: sparse_attention_backward(*a, 64, 64, c))
                arguments = (q, k, v, indices, counts, out, lse, do)
                try:
                    grads = kernel(*arguments)
                except BSAConfigError as refused:  # settings that do not fit: the other variants still run
                    print(f"| {size} | {sparsity} | {name} | refused: {refused} | | |", flush=True)
                    continue
                error = "" if expected is None else f"{max(rel_l2(a, b) for a, b in zip(grads, expected)):.1e}"
                expected = grads if expected is None else expected
                ms = Timer()(kernel, *arguments)
                print(f"| {size} | {sparsity} | {name} | {ms:.2f} | {flops / ms / 1e9:.0f} | {error} |", flush=True)


if __name__ == "__main__":
    main()
