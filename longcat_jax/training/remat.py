"""Rematerialisation per DiT block: the backward pass recomputes each block's activations from its input.

Without it a training step keeps every intermediate of all 48 blocks alive for the backward pass (tens of GB
at 480p); with it, only each block's input is kept and one block's intermediates exist at a time. The blocks are
switched in place to a subclass whose call runs under `jax.checkpoint`, so module paths (and with them LoRA names,
checkpoints and sharding rules) stay unchanged and the forward computes the same values.
"""

from __future__ import annotations

import jax
from flax import nnx

from longcat_jax.models.dit.block import DiTBlock
from longcat_jax.models.dit.transformer import LongCatDiT


class RematDiTBlock(DiTBlock):
    """A `DiTBlock` whose forward is recomputed in the backward pass instead of stored."""

    def __call__(self, x, text, text_mask, t_emb, grid, **flags):
        graphdef, state = nnx.split(self)

        def run(state, x, text, text_mask, t_emb):
            # a fresh module from the checkpointed values: nothing of the outer trace is mutated
            return DiTBlock.__call__(nnx.merge(graphdef, state), x, text, text_mask, t_emb, grid, **flags)

        return jax.checkpoint(run)(state, x, text, text_mask, t_emb)


def rematerialize_blocks(model: LongCatDiT) -> None:
    """Makes every block of `model` a `RematDiTBlock` (in place; the next jit call retraces)."""
    for block in model.blocks:
        if type(block) is DiTBlock:
            block.__class__ = RematDiTBlock
