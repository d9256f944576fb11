"""How fast float32 [64, D] tiles go into global memory by TMA reduce-add, against plain TMA stores, with the access
pattern a fused BSA backward's dq would have.

Why: the Mosaic backward runs 7 products per selected (query block, key block) pair in two kernels (dq: q k^T,
do v^T, ds k; dk/dv: k q^T, v do^T, p^T do, ds^T q). FlashAttention-3's fused backward runs 5: the dk/dv loop also
forms ds k and adds it into a float32 dq in global memory (TMA reduce-add). With 64-token key blocks each pair then
adds a [64, D] float32 tile (32 KB at D = 128) into its query block's rows, so the fused kernel pays only if those
adds keep pace: at 84,480 tokens, 32 heads, 0.9375 that is 3.46 M tiles (113 GB) in a backward now 38-45 ms long.

Each CTA of a (heads, ctas) grid holds one tile of ones in shared memory and sends it `--per-cta` times to the rows of
block (cta * 37 + i * 101 + head * 11) mod M of its head in a [1, M * 64, heads, D] float32 array, at most
`--in-flight` sends unread, so that CTAs running together add into the same query blocks now and then, as a fused
backward's would. Prints the time and throughput of reduce-add and of plain stores. Needs a Hopper GPU.

    python3 benchmarks/tma_reduce_add.py [--heads 32] [--blocks 1320] [--ctas 660] [--per-cta 164] [--in-flight 1,4,8]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

BLOCK = 64  # rows of a tile: one query block


def tile_sender(heads: int, blocks: int, ctas: int, per_cta: int, in_flight: int, reduce: bool, head_dim: int):
    """A jitted kernel that sends each CTA's [64, head_dim] float32 tile per_cta times (reduce-add or plain store)."""
    out_type = jax.ShapeDtypeStruct((1, blocks * BLOCK, heads, head_dim), jnp.float32)

    def body(out_ref, tile_smem):
        head, cta = lax.axis_index("heads"), lax.axis_index("ctas")
        ones = jnp.full((BLOCK, head_dim), 1.0, jnp.float32)
        tile_smem[...] = plgpu.layout_cast(ones, plgpu.Layout.WGMMA)
        plgpu.commit_smem()

        @pl.loop(0, per_cta)
        def _send(i):
            block = lax.rem(cta * 37 + i * 101 + head * 11, blocks)
            plgpu.copy_smem_to_gmem(
                tile_smem, out_ref.at[0, pl.ds(block * BLOCK, BLOCK), head], reduction_op="add" if reduce else None
            )
            plgpu.wait_smem_to_gmem(in_flight, wait_read_only=True)

        plgpu.wait_smem_to_gmem(0)

    kernel = plgpu.kernel(
        body, out_type=out_type, grid=(heads, ctas), grid_names=("heads", "ctas"),
        scratch_types=[plgpu.SMEM((BLOCK, head_dim), jnp.float32)],
    )
    return jax.jit(kernel)


def best_seconds(fn, repeats: int) -> float:
    """The least wall time of `repeats` calls of fn after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=1320, help="query blocks a head (84,480 tokens: 1,320)")
    parser.add_argument("--ctas", type=int, default=660, help="CTAs a head (two key blocks each: 660)")
    parser.add_argument("--per-cta", type=int, default=164, help="tiles a CTA sends (two lists of 82 at 0.9375)")
    parser.add_argument("--in-flight", default="4", help="comma-separated: sends a CTA leaves unread")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the records here")
    args = parser.parse_args()
    if jax.devices()[0].platform != "gpu":
        raise SystemExit("benchmarks/tma_reduce_add.py needs a Hopper GPU (TMA reduce-add); none found")
    gigabytes = args.heads * args.ctas * args.per_cta * BLOCK * args.head_dim * 4 / 1e9
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}; {gigabytes:.1f} GB a call")
    print("| send | in flight | ms | TB/s |\n|---|---|---|---|")
    records = []
    for in_flight in (int(n) for n in args.in_flight.split(",")):
        for reduce in (True, False):
            fn = tile_sender(args.heads, args.blocks, args.ctas, args.per_cta, in_flight, reduce, args.head_dim)
            seconds = best_seconds(fn, args.repeats)
            send = "reduce-add" if reduce else "store"
            records.append({"send": send, "in_flight": in_flight, "ms": seconds * 1e3, "gb": gigabytes})
            print(f"| {send} | {in_flight} | {seconds * 1e3:.2f} | {gigabytes / seconds / 1e3:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
