"""Where the error of `--quantize fp8-attention` comes from, block by block, at the real DiT width.

At the 480p CFG shape the mode's block updates were 8.6e-2 (block 0) to 2.6e-1 (block 47) from bf16 on an H200,
where `fp8` alone was 5.9-6.3e-2 at every depth, and on the CPU the emulated FP8 attention (`emulated_fp8_attention`,
the same roundings in float32) added almost nothing at smaller sizes (BENCHMARKS.md, "FP8 attention in the DiT").
This script runs one random real-config DiT (13.6B at depth 48; kernels N(0, 1/fan_in)) on a token grid small
enough for the emulation's materialised scores, next to its bf16 twin, in each mode:

- `fp8`: FP8 GEMMs, bf16 attention;
- `fp8-attention`: FP8 GEMMs and cuDNN's FP8 attention (on a GPU);
- `fp8-attention-emulated`: FP8 GEMMs and the float32 emulation of the same FP8 attention;

and prints each block's update error (`longcat_jax.quantization.block_errors`: each block on the bf16 model's input)
at every `--every`-th block, with the step output's relative L2 against bf16. cuDNN against the emulation on the same
grid tells a property of the FP8 arithmetic from one of cuDNN's call.

    python3 benchmarks/fp8_attention_depth.py [--grid 8x16x16] [--batch 2] [--depth 48] [--small]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bsa_inputs import grid_argument  # noqa: E402  (this script's siblings)
from dit_step import random_inputs, real_config  # noqa: E402
from flax import nnx  # noqa: E402

from longcat_jax.metrics import rel_l2  # noqa: E402
from longcat_jax.models.dit import attention as dit_attention  # noqa: E402
from longcat_jax.models.dit.config import DiTConfig  # noqa: E402
from longcat_jax.models.dit.loading import random_dit  # noqa: E402
from longcat_jax.models.dit.quantized_linear import quantize_linears  # noqa: E402
from longcat_jax.quantization.attention import emulated_fp8_attention, fp8_attention  # noqa: E402
from longcat_jax.quantization.block_errors import block_errors  # noqa: E402
from longcat_jax.quantization.modes import SCHEMES  # noqa: E402

MODES = ("fp8", "fp8-attention", "fp8-attention-emulated")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=grid_argument, default="8x16x16", help="token grid TxHxW (after the 1x2x2 patches)")
    parser.add_argument("--batch", type=int, choices=(1, 2), default=2, help="2: a CFG batch, as at 480p")
    parser.add_argument("--depth", type=int, default=48)
    parser.add_argument("--every", type=int, default=6, help="print every n-th block's error (and the last)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    parser.add_argument("--small", action="store_true", help="a 256-wide DiT of 2 blocks (a check on any machine)")
    args = parser.parse_args()
    grid = args.grid
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown --modes {unknown}; choose from {', '.join(MODES)}")
    config = DiTConfig.from_dict(real_config(args.depth, bsa=None, small=args.small))
    args.depth = config.depth
    inputs = random_inputs(grid, args.batch)
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}; grid {grid} x batch {args.batch} "
          f"({int(np.prod(grid))} tokens each), depth {args.depth}", flush=True)
    reference = random_dit(config, dtype=jnp.bfloat16, draw_on_device=True)
    shown = sorted({*range(0, args.depth, args.every), args.depth - 1})
    print("| mode | step output rel L2 vs bf16 | block update rel L2: " + " / ".join(f"{i}" for i in shown)
          + " | median | max (block) |")
    print("|---|---|---|---|---|")
    for mode in modes:
        start = time.perf_counter()
        scheme = SCHEMES["fp8"] if mode == "fp8" else SCHEMES["fp8-attention"]
        model = quantize_linears(random_dit(config, dtype=jnp.bfloat16, draw_on_device=True), scheme)
        model.set_fp8_attention(mode != "fp8")
        # the DiT's self attention calls the name it imported: swapped for the emulation in that mode only
        dit_attention.fp8_attention = emulated_fp8_attention if mode.endswith("emulated") else fp8_attention
        graphdef, state = nnx.split(model)
        out = jax.jit(lambda state, *a, g=graphdef: nnx.merge(g, state)(*a))(state, *inputs)
        want, blocks = block_errors(reference, model, *inputs)
        updates = np.array([e.update_rel for e in blocks])
        worst = int(np.argmax(updates))
        print(f"| {mode} | {rel_l2(jax.device_get(out), jax.device_get(want)):.3e} | "
              + " / ".join(f"{updates[i]:.2e}" for i in shown)
              + f" | {np.median(updates):.2e} | {updates[worst]:.2e} ({worst}) |", flush=True)
        print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
        del model, graphdef, state, out, want  # one candidate model on the device at a time
    dit_attention.fp8_attention = fp8_attention


if __name__ == "__main__":
    main()
