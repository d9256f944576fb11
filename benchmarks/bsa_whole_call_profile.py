"""Where the whole BSA call's device time goes: each XLA op and Pallas kernel of one jitted `bsa_attention`.

Why: #19's whole-call target (2.2x the original) is missed by what runs around the forward kernel (the head scales,
the reorder and e4m3 passes, the block means, the scores and the top-k). This prints, per grid, top-k point and kernel
form (bf16, FP8), the largest device ops of one call (`device_profile.print_top`), with the source lines of each
XLA fusion, so the parts can be weighed against each other in the same process; then the GPU's idle gaps over
`--calls` back-to-back calls (`device_profile.print_idle_gaps`), which tell launch gaps from a slower clock where a
timed call runs longer than its summed device time. `--backward` profiles the forward and backward of the whole call
(`jax.vjp`, a random cotangent; bf16 forms only, the FP8 forward has no backward) instead.

    python3 benchmarks/bsa_whole_call_profile.py --sizes 24x44x80 --sparsities 0.875,0.96875 --forms fp8,bf16
    python3 benchmarks/bsa_whole_call_profile.py --sizes 24x44x80 --sparsities 0.9375 --forms bf16 --backward
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bsa_inputs import parse_grid  # noqa: E402  # this script's sibling
from device_profile import print_idle_gaps, print_top  # noqa: E402

import kernels  # noqa: E402
from kernels import BSAParams, KernelConfig, bsa_attention  # noqa: E402

# "fp8 r1": one launch where `key_ranges.auto_fp8_key_ranges` would split (168,960 tokens at top-k 0.875 / 0.9375)
FORMS = {"bf16": KernelConfig(), "fp8": KernelConfig(fp8=True), "fp8 r1": KernelConfig(fp8=True, key_ranges=1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="24x44x80", help="latent grids TxHxW, comma-separated")
    parser.add_argument("--sparsities", default="0.875,0.96875", help="top-k sparsities, comma-separated")
    parser.add_argument("--forms", default="fp8,bf16", help="comma-separated subset of " + ", ".join(FORMS))
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--top", type=int, default=16, help="how many of the largest ops to print")
    parser.add_argument("--calls", type=int, default=3,
                        help="back-to-back calls (one wait at the end, as the benchmark times them) whose GPU idle "
                             "gaps are printed after the op table")
    parser.add_argument("--backward", action="store_true", help="profile forward + backward (bf16 forms only)")
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, kernels from {kernels.__file__}")
    forms = args.forms.split(",")
    unknown = sorted(set(forms) - set(FORMS))
    if unknown:
        parser.error(f"unknown forms {unknown}; choose from {sorted(FORMS)}")
    if args.backward and any(FORMS[form].fp8 for form in forms):
        parser.error("--backward: the FP8 forward is inference only; choose --forms bf16")
    for size in args.sizes.split(","):
        latent = parse_grid(size)
        tokens = latent[0] * latent[1] * latent[2]
        keys = jax.random.split(jax.random.key(0), 4)
        q, k, v, do = (jax.random.normal(key, (1, tokens, args.heads, args.head_dim), jnp.bfloat16) for key in keys)
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            params = BSAParams(sparsity=sparsity)
            for form in forms:
                def forward(q, k, v, config=FORMS[form], params=params):
                    return bsa_attention(q, k, v, latent, latent, params, backend="pallas", kernel_config=config)

                if args.backward:
                    call = jax.jit(lambda q, k, v, do, forward=forward: jax.vjp(forward, q, k, v)[1](do))
                    inputs = (q, k, v, do)
                else:
                    call, inputs = jax.jit(forward), (q, k, v)
                hlo_text = call.lower(*inputs).compile().as_text()
                jax.block_until_ready(call(*inputs))
                jax.block_until_ready(call(*inputs))
                what = "forward + backward" if args.backward else "forward"
                print_top(lambda: jax.block_until_ready(call(*inputs)), top=args.top,
                          label=f"{size} ({tokens} tokens), top-k {sparsity}, {form}, {what}", hlo_text=hlo_text)
                print_idle_gaps(lambda: jax.block_until_ready([call(*inputs) for _ in range(args.calls)]),
                                label=f"{args.calls} calls back to back")
                print(flush=True)


if __name__ == "__main__":
    main()
