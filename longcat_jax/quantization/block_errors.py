"""Per-block error of a quantized DiT against its unquantized twin, from one forward pass.

Every block i of the reference model is run next to block i of the candidate on the same input (the
reference's hidden state), and three sums are recorded: ||c_i - r_i||^2, ||r_i - x_i||^2 (the block's
update to the residual stream) and ||r_i||^2. So each block's error is local (not the accumulation of
earlier blocks' errors) and is reported both against the block's output and against the update it adds,
which is what a quantized Linear can spoil. Only these scalars are kept, so this runs at the real model size
on one GPU. Works for any nnx model whose `blocks` (an nnx.List) return their new hidden state first.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from longcat_jax.quantization.compile_options import quantized_jit

_SUMS = ("error_sq", "update_sq", "output_sq")


@dataclasses.dataclass(frozen=True)
class BlockError:
    """Block `index`: ||c - r|| / ||r|| (`output_rel`) and ||c - r|| / ||r - x|| (`update_rel`)."""

    index: int
    output_rel: float
    update_rel: float


class _PairedBlock(nnx.Module):
    """Runs the reference and the candidate block on the same input; returns the reference's output."""

    def __init__(self, reference: nnx.Module, candidate: nnx.Module):
        self.reference = reference
        self.candidate = candidate

    def __call__(self, x: jax.Array, *args, **kwargs):
        ref_out = self.reference(x, *args, **kwargs)
        cand_out = self.candidate(x, *args, **kwargs)
        ref = (ref_out[0] if isinstance(ref_out, tuple) else ref_out).astype(jnp.float32)
        cand = (cand_out[0] if isinstance(cand_out, tuple) else cand_out).astype(jnp.float32)
        self.sow(nnx.Intermediate, "error_sq", jnp.sum(jnp.square(cand - ref)))
        self.sow(nnx.Intermediate, "update_sq", jnp.sum(jnp.square(ref - x.astype(jnp.float32))))
        self.sow(nnx.Intermediate, "output_sq", jnp.sum(jnp.square(ref)))
        return ref_out


def block_errors(reference: nnx.Module, candidate: nnx.Module, *args, **kwargs) -> list[BlockError]:
    """Calls `reference(*args, **kwargs)` with each of its blocks paired with the candidate's (jitted; kwargs
    are static) and returns every block's local error. Both models must have the same number of blocks."""
    if len(reference.blocks) != len(candidate.blocks):
        raise ValueError(f"models differ in depth: {len(reference.blocks)} vs {len(candidate.blocks)} blocks")
    originals = list(reference.blocks)
    for index, block in enumerate(originals):
        reference.blocks[index] = _PairedBlock(block, candidate.blocks[index])
    try:
        graphdef, state = nnx.split(reference)
        capture = nnx.capture(lambda model, *a: model(*a, **kwargs), nnx.Intermediate)
        _, sown = quantized_jit(lambda state, *a: capture(nnx.merge(graphdef, state), *a))(state, *args)
    finally:
        for index, block in enumerate(originals):
            reference.blocks[index] = block
    results = []
    for index in range(len(originals)):
        sums = {name: float(sum(jax.device_get(v) for v in sown["blocks"][index][name].get_value())) for name in _SUMS}
        error = math.sqrt(sums["error_sq"])
        results.append(BlockError(index, error / max(math.sqrt(sums["output_sq"]), 1e-30),
                                  error / max(math.sqrt(sums["update_sq"]), 1e-30)))
    return results
