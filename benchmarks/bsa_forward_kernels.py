"""Time our BSA forward kernels side by side on one GPU: Triton-lowered and Mosaic GPU (Hopper) variants.

Kernel alone (with its key-range split and merge where a variant asks for one), on chunk-ordered random
bf16 q, k, v [1, S, 32, 128] with the top-k selection of the given sparsities; effective TFLOP/s count
the selected blocks only (4*D*64*64 per pair). Every variant is checked against the first one
(relative L2) before it is timed. Variant names: mosaic = the bf16 Mosaic GPU kernel with `KernelConfig()`'s launch
settings in one launch, mosaic auto = `KernelConfig()` as it is (its rule for phased walks), rN = N key ranges
(`KernelConfig.key_ranges`), 2 rounds = those settings with two rounds a CTA,
nN = N rounds (`MosaicConfig.rounds`) of `MosaicConfig()`'s other settings, p2 = two producer warpgroups,
cN = N consumer warpgroups (`MosaicConfig.consumers`), kN / vN = N K / V stages, reduced sums / tc sums = the softmax row sums
by a reduction / on the tensor cores (`MosaicConfig.row_sums_on_tensor_cores`), conditional = a thread skips its
accumulator's rescale where none of its rows' maxima moved (`MosaicConfig.conditional_rescale`), tN = the maxima held
until exceeded by N (`MosaicConfig.rescale_threshold`), phased = `MosaicConfig.phased_walks` of the GPU's SM count
(each CTA starts its lists at its phase's entry), fp8 = the FP8 forward
(`KernelConfig(fp8=True)`, its default launch settings and key ranges but the named ones) on e4m3 operands
quantized before the timed call (its rel. L2 against the first variant is FP8's own error too).

    python3 benchmarks/bsa_forward_kernels.py [--sizes 24x44x80,48x44x80] [--sparsities 0.875,0.9375,0.96875]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from bsa_attention import Timer, rel_l2  # noqa: E402  (this script's sibling)

from kernels import BSAConfigError, BSAParams, KernelConfig, MosaicConfig, key_ranges, select_blocks  # noqa: E402
from kernels.fp8_operands import quantize_operands  # noqa: E402
from kernels.sparse_attention import fp8_sparse_attention_with_lse, sparse_attention_with_lse  # noqa: E402


def _mosaic(ranges, **settings) -> KernelConfig:
    return KernelConfig(forward="mosaic", mosaic=MosaicConfig(**settings), key_ranges=ranges)


def _bf16(ranges, **settings) -> KernelConfig:
    """The bf16 Mosaic forward with `KernelConfig()`'s launch settings but `settings`, in `ranges` key ranges."""
    mosaic = dataclasses.replace(KernelConfig().mosaic, **settings)
    return dataclasses.replace(KernelConfig(), forward="mosaic", mosaic=mosaic, key_ranges=ranges)


def _fp8(**settings) -> KernelConfig:
    """The FP8 forward with its default launch settings (`KernelConfig.mosaic_fp8`) but `settings`."""
    return KernelConfig(fp8=True, mosaic_fp8=dataclasses.replace(KernelConfig().mosaic_fp8, **settings))


VARIANTS = {
    "mosaic": _bf16(1),  # bf16, its default launch settings
    "mosaic auto": _bf16(None),
    "mosaic r2": _bf16(2),
    "mosaic r3": _bf16(3),
    "mosaic 2 rounds": _bf16(1, rounds=2),  # KernelConfig()'s bf16 settings before one round became its default
    "mosaic 2 rounds r3": _bf16(3, rounds=2),
    "mosaic phased": None,  # these: `phased_walks` of the GPU's SM count, set in main
    "mosaic r2 phased": None,
    "mosaic r3 phased": None,
    "fp8 phased": None,
    "fp8 r1 phased": None,
    "mosaic phased 2 rounds": None,
    "triton": KernelConfig(forward="triton", key_ranges=1),
    "triton r2": KernelConfig(forward="triton", key_ranges=2),
    "mosaic n1": _mosaic(1, rounds=1),
    "mosaic n2": _mosaic(1, rounds=2),
    "mosaic n4": _mosaic(1, rounds=4),
    "mosaic n8": _mosaic(1, rounds=8),
    "mosaic n4 r2": _mosaic(2, rounds=4),
    "mosaic n4 p2": _mosaic(1, rounds=4, producers=2),
    "mosaic n4 no schedule barrier": _mosaic(1, rounds=4, schedule_barrier=False),
    "mosaic n2 no schedule barrier": _mosaic(1, rounds=2, schedule_barrier=False),
    "mosaic n2 reduced sums": _mosaic(1, rounds=2, row_sums_on_tensor_cores=False),
    "mosaic n2 conditional": _mosaic(1, rounds=2, conditional_rescale=True),
    "mosaic n2 conditional t2": _mosaic(1, rounds=2, conditional_rescale=True, rescale_threshold=2.0),
    "fp8": _fp8(),
    "fp8 c2 n2": _fp8(consumers=2, rounds=2),
    "fp8 c2 k3 v3": _fp8(consumers=2, rounds=2, k_stages=3, v_stages=3),
    "fp8 c2 p2": _fp8(consumers=2, rounds=2, producers=2),
    "fp8 n2": _fp8(rounds=2),
    "fp8 n4": _fp8(rounds=4),
    "fp8 k3": _fp8(k_stages=3),
    "fp8 tc sums": _fp8(row_sums_on_tensor_cores=True),
    "fp8 reduced sums": _fp8(row_sums_on_tensor_cores=False),
    "fp8 r1": dataclasses.replace(_fp8(), key_ranges=1),  # "fp8" splits where `key_ranges.auto_fp8_key_ranges` does
    "fp8 r2": dataclasses.replace(_fp8(), key_ranges=2),
    "fp8 r3": dataclasses.replace(_fp8(), key_ranges=3),
    "fp8 r1 conditional": dataclasses.replace(_fp8(conditional_rescale=True), key_ranges=1),
    "fp8 r1 conditional t2": dataclasses.replace(_fp8(conditional_rescale=True, rescale_threshold=2.0), key_ranges=1),
    "fp8 r1 conditional t4": dataclasses.replace(_fp8(conditional_rescale=True, rescale_threshold=4.0), key_ranges=1),
}


def _timed_kernel(config: KernelConfig, q, k, v):
    """(jitted kernel, its arguments before indices and counts): FP8 variants take e4m3 operands made here."""
    if config.fp8:
        operands = jax.jit(quantize_operands)(q, k, v)
        return jax.jit(lambda o, i, c: fp8_sparse_attention_with_lse(o, i, c, config)[0]), (operands,)
    return jax.jit(lambda *a: sparse_attention_with_lse(*a, 64, 64, config)[0]), (q, k, v)


def parse_variant_args(description: str, variants: dict) -> tuple[argparse.Namespace, list[str]]:
    """The command line the kernel-variant scripts share (sizes, sparsities, variants): (arguments, variant names);
    an unknown variant is refused with the known ones named."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="24x44x80,48x44x80", help="latent grids TxHxW, comma-separated")
    parser.add_argument("--sparsities", default="0.875,0.9375,0.96875")
    parser.add_argument("--variants", default=",".join(variants), help="comma-separated subset of " + ", ".join(variants))
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(variants))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(variants)}")
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    return args, names


def main() -> None:
    args, names = parse_variant_args(__doc__, VARIANTS)
    phases = key_ranges.sm_count()
    VARIANTS.update({f"mosaic{r} phased": _bf16(n, phased_walks=phases) for r, n in (("", 1), (" r2", 2), (" r3", 3))})
    VARIANTS["fp8 phased"] = _fp8(phased_walks=phases)
    VARIANTS["fp8 r1 phased"] = dataclasses.replace(_fp8(phased_walks=phases), key_ranges=1)
    VARIANTS["mosaic phased 2 rounds"] = _bf16(1, phased_walks=phases, rounds=2)
    print(f"device: {jax.devices()[0].device_kind}, phased walks: {phases} phases")
    print("| grid | sparsity | kernel | ms | effective TFLOP/s | rel. L2 vs first |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        latent = tuple(int(n) for n in size.split("x"))
        shape = (1, math.prod(latent), 32, 128)
        q, k, v = (jax.random.normal(key, shape, jnp.bfloat16) for key in jax.random.split(jax.random.key(0), 3))
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            params = BSAParams(sparsity=sparsity)
            indices, counts = jax.jit(lambda a, b, p=params: select_blocks(a, b, p, backend="pallas"))(q, k)
            flops = 4 * shape[-1] * 64 * 64 * int(jnp.sum(counts))
            expected = None
            for name in names:
                kernel, inputs = _timed_kernel(VARIANTS[name], q, k, v)
                try:
                    out = kernel(*inputs, indices, counts)
                except BSAConfigError as refused:  # e.g. stages that do not fit these lists: the others still run
                    print(f"| {size} | {sparsity} | {name} | refused: {refused} | | |", flush=True)
                    continue
                error = "" if expected is None else f"{rel_l2(out, expected):.1e}"
                expected = out if expected is None else expected
                ms = Timer()(kernel, *inputs, indices, counts)
                print(f"| {size} | {sparsity} | {name} | {ms:.2f} | {flops / ms / 1e9:.0f} | {error} |", flush=True)


if __name__ == "__main__":
    main()
