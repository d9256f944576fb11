"""Per-block error of a quantized DiT against its unquantized twin, from one forward pass.

Every block i of the reference model is run next to block i of the candidate on the same input (the
reference's hidden state), and three sums are recorded: ||c_i - r_i||^2, ||r_i - x_i||^2 (the block's
update to the residual stream) and ||r_i||^2. So each block's error is local (not the accumulation of
earlier blocks' errors) and is reported both against the block's output and against the update it adds,
which is what a quantized Linear can spoil. Only these scalars are kept, so this runs at the real model size
on one GPU.

The model's own call runs eagerly around its blocks, and each pair of blocks runs as one jitted program: the 48
blocks of the DiT share their structure and shapes, so that program compiles once (a program of all 96 blocks
unrolled took longer to compile at the real size than a 160 s benchmark case had). Works for any nnx model whose
`blocks` (an nnx.List) return their new hidden state first; arguments that are not arrays (a token grid, BSA
settings, flags) are static.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longcat_jax.quantization.compile_options import quantized_jit


@dataclasses.dataclass(frozen=True)
class BlockError:
    """Block `index`: ||c - r|| / ||r|| (`output_rel`) and ||c - r|| / ||r - x|| (`update_rel`)."""

    index: int
    output_rel: float
    update_rel: float


def _is_array(leaf) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray))


def _first(out):
    return out[0] if isinstance(out, tuple) else out


class _PairedBlocks:
    """Runs a reference block and a candidate block on the same input in one jitted program per call signature,
    and keeps each call's three sums."""

    def __init__(self):
        self._programs: dict = {}
        self.sums: list[tuple[jax.Array, jax.Array, jax.Array]] = []  # per block: error, update, output (squared)

    def _program(self, key):
        if key not in self._programs:
            ref_def, cand_def, treedef, static = key

            def paired(ref_state, cand_state, x, dynamic):
                leaves = iter(dynamic)
                args, kwargs = jax.tree.unflatten(treedef, [next(leaves) if s is _DYNAMIC else s for s in static])
                ref_out = nnx.merge(ref_def, ref_state)(x, *args, **kwargs)
                cand_out = nnx.merge(cand_def, cand_state)(x, *args, **kwargs)
                ref = _first(ref_out).astype(jnp.float32)
                cand = _first(cand_out).astype(jnp.float32)
                sums = (jnp.sum(jnp.square(cand - ref)), jnp.sum(jnp.square(ref - x.astype(jnp.float32))),
                        jnp.sum(jnp.square(ref)))
                return ref_out, sums

            self._programs[key] = quantized_jit(paired)
        return self._programs[key]

    def __call__(self, reference: nnx.Module, candidate: nnx.Module, x, *args, **kwargs):
        ref_def, ref_state = nnx.split(reference)
        cand_def, cand_state = nnx.split(candidate)
        leaves, treedef = jax.tree.flatten((args, kwargs))
        static = tuple(_DYNAMIC if _is_array(leaf) else leaf for leaf in leaves)
        program = self._program((ref_def, cand_def, treedef, static))
        ref_out, sums = program(ref_state, cand_state, x, [leaf for leaf in leaves if _is_array(leaf)])
        self.sums.append(sums)
        return ref_out


_DYNAMIC = object()  # marks an array argument among the static ones of a paired call


class _PairedBlock(nnx.Module):
    """Stands in for block i of the reference: runs it and the candidate's block i through `pairs`."""

    def __init__(self, reference: nnx.Module, candidate: nnx.Module, pairs: _PairedBlocks):
        self.reference = reference
        self.candidate = candidate
        self.pairs = pairs

    def __call__(self, x: jax.Array, *args, **kwargs):
        return self.pairs(self.reference, self.candidate, x, *args, **kwargs)


def block_errors(reference: nnx.Module, candidate: nnx.Module, *args, **kwargs) -> tuple[jax.Array, list[BlockError]]:
    """Calls `reference(*args, **kwargs)` with each of its blocks paired with the candidate's and returns the
    reference's output and every block's local error. Both models must have the same number of blocks."""
    if len(reference.blocks) != len(candidate.blocks):
        raise ValueError(f"models differ in depth: {len(reference.blocks)} vs {len(candidate.blocks)} blocks")
    originals = list(reference.blocks)
    pairs = _PairedBlocks()
    for index, block in enumerate(originals):
        reference.blocks[index] = _PairedBlock(block, candidate.blocks[index], pairs)
    try:
        output = reference(*args, **kwargs)
    finally:
        for index, block in enumerate(originals):
            reference.blocks[index] = block
    results = []
    for index, sums in enumerate(jax.device_get(pairs.sums)):
        error_sq, update_sq, output_sq = (float(s) for s in sums)
        error = math.sqrt(error_sq)
        results.append(BlockError(index, error / max(math.sqrt(output_sq), 1e-30),
                                  error / max(math.sqrt(update_sq), 1e-30)))
    return output, results
