"""Time BSA on a token grid that the chunks do not divide (padded to whole chunks inside) next to grids they do.

The guide's 720p case: latent grid (24, 45, 80) with 4x4x4 chunks, padded to (24, 48, 80); next to it
(24, 44, 80), the largest whole-chunk grid below it, and (24, 48, 80), the padded grid itself, so the table
separates what the extra blocks cost from what the padding machinery costs (pad, masked kernels, crop). One
batch of the real model's 32 heads of 128 (LongCatDiT: hidden 4096), bf16, top-k at sparsity 0.9375. Each row
times the whole `bsa_attention` call (layout, selection, attention, raster order back), forward and
forward + backward (`jax.vjp`), as medians after warm-up, as benchmarks/bsa_attention.py times them.

    python3 benchmarks/bsa_odd_grid.py [--sizes 24x44x80,24x45x80,24x48x80] [--forward auto|triton|mosaic]
        [--check] [--json PATH]
    python3 benchmarks/bsa_odd_grid.py --small   # CPU: tiny grids through the Pallas interpreters, a functional check
                                                 # (sparsity 0.5, one timed call each)

`--check` compares the Pallas call with the jnp reference backend (same padding rule) on the grids that need padding.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import jax
import jax.numpy as jnp
from bsa_attention import Timer  # this script's sibling

from kernels import BSAParams, GridPadding, KernelConfig, bsa_attention
from kernels.sparse_attention import FORWARD_KERNELS
from longcat_jax.metrics import rel_l2

log = logging.getLogger("bsa_odd_grid")

GPU_SIZES = "24x44x80,24x45x80,24x48x80"
SMALL_SIZES = "4x4x12,4x5x12,4x8x12"  # the middle one pads along H to the last, as 720p does
SMALL_SPARSITY = 0.5  # 0.9375 keeps int(0.0625 * Mk) = 0 of the few key blocks of a small grid


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    return [tuple(int(n) for n in size.split("x")) for size in text.split(",")]


def measure(latent, params: BSAParams, heads: int, head_dim: int, backend: str, config: KernelConfig, check: bool,
            repeats: dict):
    """One grid's record: tokens, padding, forward and forward + backward ms, and the check against the reference.

    repeats: the `Timer`'s warmup / trials / calls (benchmarks/bsa_attention.py's timing method).
    """
    tokens = math.prod(latent)
    padding = GridPadding.of(latent, params.chunk_3d_shape_q)
    keys = jax.random.split(jax.random.key(tokens), 4)
    q, k, v, do = (jax.random.normal(key, (1, tokens, heads, head_dim), jnp.bfloat16) for key in keys)

    def attention(q, k, v, backend=backend):
        return bsa_attention(q, k, v, latent, latent, params, backend=backend, kernel_config=config)

    forward = jax.jit(attention)
    forward_backward = jax.jit(lambda q, k, v, do: jax.vjp(attention, q, k, v)[1](do))
    record = {
        "grid": "x".join(map(str, latent)),
        "tokens": tokens,
        "padded_tokens": math.prod(padding.padded),
        "blocks": padding.num_blocks,
        "fwd_ms": Timer(**repeats)(forward, q, k, v),
        "fwd_bwd_ms": Timer(**repeats)(forward_backward, q, k, v, do),
    }
    if check and padding.needed:
        ours = forward(q, k, v)
        reference = jax.jit(lambda q, k, v: attention(q, k, v, backend="reference"))(q, k, v)
        if not bool(jnp.any(reference != 0)):
            raise SystemExit(f"the selection kept no key block at {latent}: use a larger grid or a lower --sparsity")
        record["rel_l2_vs_reference"] = rel_l2(ours, reference)
    log.info("%s", record)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true",
                        help="tiny grids, 2 heads of 64, through the Pallas interpreters on the CPU (a functional check)")
    parser.add_argument("--sizes", help=f"latent grids TxHxW, comma-separated (default {GPU_SIZES}; --small: {SMALL_SIZES})")
    parser.add_argument("--forward", default="auto", choices=FORWARD_KERNELS,
                        help="the forward kernel (auto: the Mosaic GPU one on Hopper, else the Triton one; --small: triton)")
    parser.add_argument("--sparsity", type=float, help=f"top-k sparsity (default 0.9375; --small: {SMALL_SPARSITY})")
    parser.add_argument("--check", action="store_true", help="compare with the jnp reference backend")
    parser.add_argument("--json", help="write the records to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    if args.small:
        sizes, heads, head_dim, backend = parse_sizes(args.sizes or SMALL_SIZES), 2, 64, "pallas_interpret"
        config = KernelConfig(forward="triton" if args.forward == "auto" else args.forward)
        check, repeats = True, dict(warmup=0, trials=1, calls=1)  # interpreted: its times say nothing of a GPU's
    else:
        sizes, heads, head_dim, backend = parse_sizes(args.sizes or GPU_SIZES), 32, 128, "pallas"
        config, check, repeats = KernelConfig(forward=args.forward), args.check, {}
    sparsity = args.sparsity if args.sparsity is not None else SMALL_SPARSITY if args.small else 0.9375
    params = BSAParams(sparsity=sparsity, chunk_3d_shape_q=(4, 4, 4), chunk_3d_shape_k=(4, 4, 4))
    device = jax.devices()[0].device_kind
    log.info("device %s, jax %s, backend %s, %s", device, jax.__version__, backend, config)
    records = [measure(latent, params, heads, head_dim, backend, config, check, repeats) for latent in sizes]

    base = records[0]
    header = ["grid", "tokens", "padded", "blocks", "fwd ms", "fwd+bwd ms", f"fwd / {base['grid']}",
              f"fwd+bwd / {base['grid']}"]
    if check:
        header.append("rel_l2 vs reference")
    print(f"device: {device}; {heads} heads x {head_dim}, bf16, 4x4x4 chunks, sparsity {sparsity}; {config}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for record in records:
        row = [record["grid"], str(record["tokens"]), str(record["padded_tokens"]), str(record["blocks"]),
               f"{record['fwd_ms']:.2f}", f"{record['fwd_bwd_ms']:.2f}",
               f"{record['fwd_ms'] / base['fwd_ms']:.3f}", f"{record['fwd_bwd_ms'] / base['fwd_bwd_ms']:.3f}"]
        if check:
            row.append(f"{record['rel_l2_vs_reference']:.2e}" if "rel_l2_vs_reference" in record else "-")
        print("| " + " | ".join(row) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "config": str(config), "records": records}, indent=1))
    if any(record.get("rel_l2_vs_reference", 0.0) > 2e-2 for record in records):
        raise SystemExit("the Pallas call differs from the reference by more than 2e-2 (rel_l2): see the table")


if __name__ == "__main__":
    main()
