"""The FP8 forward's two forms of the softmax row sums against float32 attention, by list length.

Why: on an H200 the row sums on the tensor cores (`MosaicConfig.row_sums_on_tensor_cores`), accumulated in place,
moved the FP8 kernel's output 8.5e-2 to 4.2e-1 from the reduction's, growing with the list, where the Mosaic
interpreter (exact float32 dots) has them agree to about 1e-3 (BENCHMARKS.md, "Three consumer warpgroups for the FP8
forward"); each block's sums now start from a zero accumulator ("The FP8 row sums from a fresh accumulator"). This
script calls the kernel directly on one query block pair
over a dense list of N key blocks, random normal q, k, v, for each form and list length, and prints each output's
relative L2 against float32 attention and against the other form: in the interpreter on the CPU, natively on a
Hopper GPU (`--native`), where the reading to check is whether the tensor-core sums drift as lists grow.

    python3 benchmarks/fp8_row_sums.py                 # CPU, Mosaic interpreter
    python3 benchmarks/fp8_row_sums.py --native --lists 8,82,165,330,660
"""

from __future__ import annotations

import argparse
import json
import math
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from bsa_attention import rel_l2  # noqa: E402  (this script's sibling)

from kernels import MosaicConfig  # noqa: E402
from kernels.fp8_operands import quantize_operands  # noqa: E402
from kernels.pallas_mosaic import mosaic_forward  # noqa: E402

QUERY_BLOCKS, HEAD_DIM = 2, 128


def outputs(key_blocks: int, native: bool, seed: int = 0):
    """(reduced-sum output, tensor-core-sum output, float32 attention), each [1, 128, 1, 128] float32."""
    q, k, v = (jax.random.normal(key, (1, blocks * 64, 1, HEAD_DIM), jnp.float32)
               for key, blocks in zip(jax.random.split(jax.random.key(seed), 3),
                                      (QUERY_BLOCKS, key_blocks, key_blocks), strict=True))
    operands = quantize_operands(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
    indices = jnp.tile(jnp.arange(key_blocks, dtype=jnp.int32), (1, 1, QUERY_BLOCKS, 1))  # [1, 1, Mq, N]
    counts = jnp.full((1, 1, QUERY_BLOCKS), key_blocks, jnp.int32)
    forms = []
    for tc_sums in (False, True):
        config = MosaicConfig(schedule_barrier=False, row_sums_on_tensor_cores=tc_sums, interpret=not native)
        out, _ = jax.jit(lambda o, i, c, config=config: mosaic_forward(
            o.q, o.k, o.v_t, i, jnp.zeros_like(c), c, config, fp8_scales=o.kernel_scales(i), out_dtype=jnp.float32,
        ))(operands, indices, counts)
        forms.append(out)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest") / math.sqrt(HEAD_DIM)
    dense = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v, precision="highest")
    return *forms, dense


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lists", default="8,32,96,192,384", help="key blocks per list, comma-separated")
    parser.add_argument("--native", action="store_true", help="run the kernel on the GPU (Hopper), not interpreted")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, {'native' if args.native else 'interpreter'}")
    print("| key blocks per list | reduced sums vs float32 | tensor-core sums vs float32 | tensor-core vs reduced |")
    print("|---|---|---|---|")
    rows = []
    for key_blocks in (int(n) for n in args.lists.split(",")):
        reduced, tensor_cores, dense = outputs(key_blocks, args.native)
        rows.append({"key_blocks": key_blocks, "reduced_vs_f32": float(rel_l2(reduced, dense)),
                     "tensor_cores_vs_f32": float(rel_l2(tensor_cores, dense)),
                     "tensor_cores_vs_reduced": float(rel_l2(tensor_cores, reduced))})
        print("| {key_blocks} | {reduced_vs_f32:.3e} | {tensor_cores_vs_f32:.3e} | {tensor_cores_vs_reduced:.3e} |"
              .format(**rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=1)


if __name__ == "__main__":
    main()
