"""The whole DiT quantized with GPTQ (`models.dit.calibration`) against round to nearest, on inputs it was not fitted to.

A random DiT of the real config (`dit_step.real_config`: width 4096, kernels N(0, 1/fan_in), weights in `--dtype`)
of `--depth` blocks is quantized by `--quantize` twice: round to nearest (what `convert --quantize` writes without
`--calibration`) and GPTQ on `random_calibration` (`--calls` calls on `--grid`, seed 0; by default what `convert
--calibration random` uses). Both run on `--held-out` calls (seed 1: other latents, text and timesteps) next to the
unquantized DiT, activations in `--dtype`, and the script prints the DiT output's relative L2 against the
unquantized output for each call, and the GPTQ pass's time. With
bfloat16 activations it also prints the distance of each of the three (unquantized, round to nearest, GPTQ) from the
unquantized weights run with float32 activations: the unquantized one's is the rounding of the activations alone,
a floor that every bf16 comparison carries. And (`--nudge`, bfloat16 only) how far the bf16 DiT moves from
itself when a fraction of its quantized layers' weights are moved by one bf16 ulp, a weight change far smaller than
any 8-bit rounding's (printed beside round to nearest's): how much of a weight change's error against a bf16 run is
bf16's own sensitivity.

    python3 benchmarks/gptq_dit.py [--depth 4] [--grid 4x16x32] [--calls 16] [--quantize int8] [--dtype bfloat16]
        [--nudge 0.01] [--skip-gptq]
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
from jax import lax

from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit.calibration import gptq_quantize_dit
from longcat_jax.models.dit.calibration_inputs import random_calibration
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.layers import Linear
from longcat_jax.models.dit.loading import random_dit
from longcat_jax.models.dit.quantized_linear import quantize_linears
from longcat_jax.quantization.formats import dequantize_kernel, quantize_kernel
from longcat_jax.quantization.modes import scheme_for
from longcat_jax.quantization.policy import is_quantized_module

forward = nnx.jit(lambda model, *args: model(*args))


@jax.jit
def _nudged(kernel: jax.Array, key: jax.Array, fraction: float, sign: int) -> jax.Array:
    """`kernel` (bf16) with a `fraction` of its entries, chosen by `key`, one ulp larger in magnitude (sign 1) or
    back (sign -1): the same key undoes it exactly."""
    bits = lax.bitcast_convert_type(kernel, jnp.uint16)
    chosen = jax.random.bernoulli(key, fraction, kernel.shape)
    return lax.bitcast_convert_type(jnp.where(chosen, bits + jnp.uint16(1) * sign, bits), kernel.dtype)


def _quantized_linears(model: nnx.Module) -> list[Linear]:
    return [module for path, module in nnx.iter_modules(model)
            if isinstance(module, Linear) and is_quantized_module(tuple(path))]


def _relative_change(pairs) -> float:
    """Relative L2 change over every (before, after) kernel pair, as one vector."""
    changed = total = 0.0
    for before, after in pairs:
        before, after = before.astype(jnp.float32), after.astype(jnp.float32)
        changed += float(jnp.sum(jnp.square(after - before)))
        total += float(jnp.sum(jnp.square(before)))
    return (changed / total) ** 0.5


def nudge(model: nnx.Module, fraction: float, sign: int) -> float:
    """Moves, in place, a `fraction` of the weights of every Linear the quantization policy selects by one bf16 ulp
    (sign 1), or moves them back (sign -1); returns the weights' relative L2 change."""
    pairs = []
    for index, linear in enumerate(_quantized_linears(model)):
        kernel = linear.kernel.get_value()
        moved = _nudged(kernel, jax.random.key(index), fraction, sign)
        pairs.append((kernel, moved))
        linear.kernel.set_value(moved)
    return _relative_change(pairs)


def rounding_change(model: nnx.Module, mode: str) -> float:
    """The relative L2 change round to nearest (`--quantize mode` without calibration) makes to the weights of the
    Linears the quantization policy selects."""
    fmt = scheme_for(mode).weight
    return _relative_change((kernel, dequantize_kernel(*quantize_kernel(kernel, fmt), jnp.float32))
                            for kernel in (linear.kernel.get_value() for linear in _quantized_linears(model)))


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
    parser.add_argument("--skip-gptq", action="store_true", help="only round to nearest and the bf16 floors")
    parser.add_argument("--nudge", type=float, default=0.01,
                        help="bfloat16: fraction of the quantized layers' weights moved by one ulp (0: skip)")
    args = parser.parse_args()
    if min(args.depth, args.calls, args.held_out) < 1:
        parser.error(f"--depth, --calls and --held-out must be positive, got {args.depth}, {args.calls}, "
                     f"{args.held_out}")
    if not 0 <= args.nudge <= 1:
        parser.error(f"--nudge is a fraction of the weights, from 0 to 1; got {args.nudge}")
    dtype = jnp.dtype(args.dtype)
    config = DiTConfig.from_dict(real_config(args.depth, bsa=None, small=args.small))
    model = random_dit(config, dtype=dtype, draw_on_device=True)
    calibration = random_calibration(config, args.grid, args.calls, seed=0)
    held_out = random_calibration(config, args.grid, args.held_out, seed=1)
    gptq_note = "GPTQ skipped"
    if not args.skip_gptq:
        start = time.perf_counter()
        gptq = gptq_quantize_dit(model, args.quantize, calibration, progress=True)
        jax.block_until_ready(nnx.state(gptq))
        gptq_note = f"GPTQ pass {time.perf_counter() - start:.1f} s"
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}; width {config.hidden_size}, depth "
          f"{config.depth}, {args.quantize}, activations {args.dtype}; calibration {calibration.calls} x grid "
          f"{args.grid}; {gptq_note}", flush=True)
    calls = [[jnp.asarray(a) for a in held_out.call(index)] for index in range(held_out.calls)]
    # One model beside the unquantized one and GPTQ's at a time (at the real size each bf16 copy is 27 GB); round to
    # nearest is the unquantized model itself, quantized in place last.
    outputs = {"unquantized": [np.asarray(forward(model, *call)) for call in calls]}
    if not args.skip_gptq:
        outputs["gptq"] = [np.asarray(forward(gptq, *call)) for call in calls]
        del gptq
    if dtype != jnp.float32:
        exact = random_dit(config, dtype=jnp.float32, param_dtype=dtype, draw_on_device=True)
        outputs["exact"] = [np.asarray(forward(exact, *call)) for call in calls]
        del exact
        if args.nudge:
            weight_change = nudge(model, args.nudge, 1)
            outputs["nudged"] = [np.asarray(forward(model, *call)) for call in calls]
            nudge(model, args.nudge, -1)
            print(f"nudge: {args.nudge:.2%} of the quantized layers' weights one ulp off, the weights' relative L2 "
                  f"change {weight_change:.3e}; round to nearest {args.quantize}: {rounding_change(model, args.quantize):.3e}",
                  flush=True)
    nearest = quantize_linears(model, args.quantize)
    outputs["nearest"] = [np.asarray(forward(nearest, *call)) for call in calls]
    print("| held-out call | timestep | round to nearest | GPTQ | ratio | vs float32 activations: unquantized / round to "
          "nearest / GPTQ | nudged |")
    print("|---|---|---|---|---|---|---|")
    def distance(name, index, to):
        return f"{rel_l2(outputs[name][index], to):.3e}" if name in outputs else "-"

    for index, call in enumerate(calls):
        reference = outputs["unquantized"][index]
        ratio = "-"
        if "gptq" in outputs:
            ratio = f"{rel_l2(outputs['nearest'][index], reference) / rel_l2(outputs['gptq'][index], reference):.2f}x"
        floor = "(float32 run)"
        if "exact" in outputs:
            floor = " / ".join(distance(name, index, outputs["exact"][index])
                               for name in ("unquantized", "nearest", "gptq"))
        print(f"| {index} | {float(call[1][0]):.0f} | {distance('nearest', index, reference)} | "
              f"{distance('gptq', index, reference)} | {ratio} | {floor} | {distance('nudged', index, reference)} |",
              flush=True)

if __name__ == "__main__":
    main()
