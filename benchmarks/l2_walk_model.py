"""A CPU model of the L2 hits of a BSA kernel's gathers, for two orders of walking each list: ascending, or phased.

Why: the Mosaic kernels gather each list entry's 64-token K/V tiles from global memory; at 168,960 tokens one head's
K and V (86.5 MB) outgrow an H100's 50 MB L2, and whether the CTAs running at once gather from the same part of the
head decides how often those gathers hit it (the one-launch forward hits 38-48%, the backward 93%: BENCHMARKS.md).
This models it without a GPU: CTAs of two consumers each, launched in order onto `--sms` slots, each consumer walking
a random sorted list of top-k key blocks at one entry per time unit, its CTA lasting its list's length times a
duration factor drawn around 1 (`--spread`, the relative standard deviation: 0 puts the CTAs in waves that start
together); every gather goes through an LRU cache of `--cache-blocks` K/V blocks (64 tokens of K and V, 32 KB at
head_dim 128), in time order. "phased" starts each consumer's walk at entry floor(count * (c mod sms) / sms), c its
CTA's launch place, and walks round to the start. A model, not a measurement: it prints the modelled hit rate.

    python3 benchmarks/l2_walk_model.py [--query-blocks 2640] [--sparsity 0.875] [--spread 0,0.05,0.15]
"""

from __future__ import annotations

import argparse
import heapq
import json
from collections import OrderedDict

import numpy as np

CONSUMERS = 2  # query (or key) blocks a CTA walks at once


def gather_stream(lists: np.ndarray, sms: int, spread: float, phased: bool, rng: np.random.Generator) -> np.ndarray:
    """The gathered block ids in time order. lists [heads, M, K] int: each consumer's key blocks, ascending; block ids
    are head * M + key block."""
    heads, m, k = lists.shape
    slots = [(0.0, slot) for slot in range(sms)]  # (time the slot frees, slot)
    times, blocks = [], []
    steps = np.arange(k)
    for cta in range(heads * m // CONSUMERS):
        start, slot = heapq.heappop(slots)
        duration = k * max(0.5, 1 + spread * rng.standard_normal())
        heapq.heappush(slots, (start + duration, slot))
        head, first_block = divmod(cta * CONSUMERS, m)
        first = (cta % sms) * k // sms if phased else 0
        for block in range(first_block, first_block + CONSUMERS):
            times.append(start + steps * duration / k)
            blocks.append(head * m + lists[head, block, (first + steps) % k])
    order = np.argsort(np.concatenate(times), kind="stable")
    return np.concatenate(blocks)[order]


def lru_hit_rate(stream: np.ndarray, capacity: int) -> float:
    """Share of the accesses that find their block in an LRU cache of `capacity` blocks, empty at first."""
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for block in stream.tolist():
        if block in cache:
            hits += 1
            cache.move_to_end(block)
        else:
            cache[block] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits / len(stream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--query-blocks", type=int, default=2640, help="query (= key) blocks of a head: 2640 at 168,960")
    parser.add_argument("--sparsity", type=float, default=0.875, help="top-k keeps (1 - sparsity) of the key blocks")
    parser.add_argument("--heads", type=int, default=3, help="heads modelled (launched one after another)")
    parser.add_argument("--sms", type=int, default=132, help="CTAs that run at once (an H100 SXM's SMs)")
    parser.add_argument("--cache-blocks", type=int, default=1200, help="K/V blocks the L2 holds (50 MB / 32 KB, less)")
    parser.add_argument("--spread", default="0,0.05,0.15", help="relative spread of the CTAs' durations, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    m = args.query_blocks
    if m < CONSUMERS or m % CONSUMERS:
        parser.error(f"--query-blocks must be a positive multiple of {CONSUMERS}, got {m}")
    k = round(m * (1 - args.sparsity))
    if not 0 < k <= m:
        parser.error(f"--sparsity {args.sparsity} keeps {k} of {m} key blocks; it must keep at least one")
    rng = np.random.default_rng(args.seed)
    lists = np.sort(np.argsort(rng.random((args.heads, m, m)), axis=-1)[..., :k], axis=-1)  # [heads, M, K]
    rows = []
    print(f"| walk | duration spread | modelled L2 hit rate ({m} blocks a head, {k} a list, {args.heads} heads, "
          f"{args.sms} CTAs at once, LRU of {args.cache_blocks}) |")
    print("|---|---|---|")
    for spread in (float(s) for s in args.spread.split(",")):
        for walk in ("ascending", "phased"):
            stream = gather_stream(lists, args.sms, spread, walk == "phased", np.random.default_rng(args.seed + 1))
            rate = lru_hit_rate(stream, args.cache_blocks)
            rows.append({"walk": walk, "spread": spread, "hit_rate": rate, "accesses": int(stream.size)})
            print(f"| {walk} | {spread} | {rate:.3f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
