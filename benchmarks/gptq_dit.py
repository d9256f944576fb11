"""The whole DiT quantized with GPTQ (`models.dit.calibration`) against round to nearest, on inputs it was not fitted to.

A random DiT of the real config (`dit_step.real_config`: width 4096, kernels N(0, 1/fan_in), weights in `--dtype`)
of `--depth` blocks is quantized by `--quantize` twice: round to nearest (what `convert --quantize` writes without
`--calibration`) and GPTQ on `random_calibration` (`--calls` calls on `--grid`, seed 0; by default what `convert
--calibration random` uses). Both run on `--held-out` calls (seed 1: other latents, text and timesteps) next to the
unquantized DiT, activations in `--dtype`, and the script prints the DiT output's relative L2 against the
unquantized output for each call, and the GPTQ pass's time. With
bfloat16 activations it also prints the distance of each of the three (unquantized, round to nearest, GPTQ) from the
unquantized weights run with float32 activations: the unquantized one's is the rounding of the activations alone,
a floor that every bf16 comparison carries.

    python3 benchmarks/gptq_dit.py [--depth 4] [--grid 4x16x32] [--calls 16] [--quantize int8] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from bsa_inputs import grid_argument  # this script's siblings
from dit_step import real_config
from flax import nnx

from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit.calibration import gptq_quantize_dit
from longcat_jax.models.dit.calibration_inputs import random_calibration
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.loading import random_dit
from longcat_jax.models.dit.quantized_linear import quantize_linears

forward = nnx.jit(lambda model, *args: model(*args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--grid", type=grid_argument, default="4x16x32",
                        help="token grid TxHxW of each call (default: `convert --calibration random`'s)")
    parser.add_argument("--calls", type=int, default=16, help="calibration calls (default: the converter's)")
    parser.add_argument("--held-out", type=int, default=2, help="held-out calls, on the same grid")
    parser.add_argument("--quantize", choices=("int8", "fp8-weight-only"), default="int8")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--small", action="store_true", help="a 256-wide DiT (a check on any machine)")
    args = parser.parse_args()
    if min(args.depth, args.calls, args.held_out) < 1:
        parser.error(f"--depth, --calls and --held-out must be positive, got {args.depth}, {args.calls}, "
                     f"{args.held_out}")
    dtype = jnp.dtype(args.dtype)
    config = DiTConfig.from_dict(real_config(args.depth, bsa=False, small=args.small))
    model = random_dit(config, dtype=dtype, draw_on_device=True)
    calibration = random_calibration(config, args.grid, args.calls, seed=0)
    held_out = random_calibration(config, args.grid, args.held_out, seed=1)
    start = time.perf_counter()
    gptq = gptq_quantize_dit(model, args.quantize, calibration, progress=True)
    jax.block_until_ready(nnx.state(gptq))
    seconds = time.perf_counter() - start
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}; width {config.hidden_size}, depth "
          f"{config.depth}, {args.quantize}, activations {args.dtype}; calibration {calibration.calls} x grid "
          f"{args.grid}; GPTQ pass {seconds:.1f} s", flush=True)
    calls = [[jnp.asarray(a) for a in held_out.call(index)] for index in range(held_out.calls)]
    # One model beside the unquantized one and GPTQ's at a time (at the real size each bf16 copy is 27 GB); round to
    # nearest is the unquantized model itself, quantized in place last.
    outputs = {"unquantized": [np.asarray(forward(model, *call)) for call in calls],
               "gptq": [np.asarray(forward(gptq, *call)) for call in calls]}
    if dtype != jnp.float32:
        exact = random_dit(config, dtype=jnp.float32, param_dtype=dtype, draw_on_device=True)
        outputs["exact"] = [np.asarray(forward(exact, *call)) for call in calls]
        del exact
    nearest = quantize_linears(model, args.quantize)
    outputs["nearest"] = [np.asarray(forward(nearest, *call)) for call in calls]
    print("| held-out call | timestep | round to nearest | GPTQ | ratio | vs float32 activations: unquantized / round to "
          "nearest / GPTQ |")
    print("|---|---|---|---|---|---|")
    for index, call in enumerate(calls):
        reference = outputs["unquantized"][index]
        errors = [rel_l2(outputs[name][index], reference) for name in ("nearest", "gptq")]
        floor = "(float32 run)"
        if "exact" in outputs:
            floor = " / ".join(f"{rel_l2(outputs[name][index], outputs['exact'][index]):.3e}"
                               for name in ("unquantized", "nearest", "gptq"))
        print(f"| {index} | {float(call[1][0]):.0f} | {errors[0]:.3e} | {errors[1]:.3e} | "
              f"{errors[0] / errors[1]:.2f}x | {floor} |", flush=True)

if __name__ == "__main__":
    main()
