"""The DiT's recorded BSA selection (the parity tool's diagnostic) on a token grid the chunks do not divide."""

import jax
import jax.numpy as jnp
from flax import nnx

from kernels import GridPadding
from tests.memory.dit_inputs import TEXT_LEN, tiny_dit


def test_recorded_selection_covers_the_padded_grid():
    dit = tiny_dit(bsa=True, depth=1)
    dit.record_bsa_selection()
    latents = jax.random.normal(jax.random.key(0), (1, 16, 5, 12, 20))  # tokens (5, 6, 10): no axis divides by 4
    text = jax.random.normal(jax.random.key(1), (1, 1, TEXT_LEN, dit.config.caption_channels))
    out, sown = nnx.capture(dit, nnx.Intermediate)(latents, jnp.array([500.0]), text, None)
    (mask,) = sown["blocks"][0]["attn"]["bsa_selection"].get_value()
    blocks = GridPadding.of((5, 6, 10), dit.bsa.chunk_3d_shape_q).num_blocks
    assert mask.shape == (1, dit.config.num_heads, blocks, blocks)
    kept = int(round(blocks * (1 - dit.bsa.sparsity)))
    assert bool(jnp.all(jnp.sum(mask, axis=-1) == max(kept, 1)))
    assert bool(jnp.all(jnp.isfinite(out)))
