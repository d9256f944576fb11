"""`ContextParallel`: how the DiT splits its work over a mesh axis (Ulysses-style sequence parallelism).

The DiT holds one of these (set by `shard_dit`) and calls it at three kinds of places; everything else is
left to XLA's sharding propagation inside the same `jax.jit`:

- `shard_tokens` on the residual stream [B, N, C]: every device keeps N/n contiguous tokens (raster order), so
  the per-token work (projections, norms, per-frame modulation, cross attention to the replicated text, FFN)
  runs on local tokens without communication.
- `shard_heads` on q, k, v [B, N, H, D] before self attention: the change from token- to head-sharding is one
  all-to-all (XLA moves q, k and v together), after which every device holds all N tokens for H/n heads, so the
  condition/noise split and the KV cache concatenation are local. `head_parallel` then runs the attention
  function (dense, or BSA selection + kernel) per device under `shard_map`, unchanged, on its heads; its output
  goes back to token-sharding with one more all-to-all (`shard_tokens`). With condition frames in the input,
  the block's cross attention of the noisy tokens alone also shifts tokens between neighbouring devices.
- `gather_block` (FSDP only): a block's parameters, stored split over the mesh, are all-gathered just before
  the block runs and dropped after it, so only one block's full weights are live at a time.

Token counts that the mesh does not divide are handled by XLA's uneven sharding (it pads internally); head
counts it does not divide are padded with zero heads for the attention and cut off again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from longcat_jax.sharding.mesh import CONTEXT_AXIS
from longcat_jax.sharding.params import param_shardings, put


@dataclasses.dataclass(frozen=True)
class ContextParallel:
    """Context parallelism over `axis` of `mesh`; `fsdp`: parameters are stored split over the axis.

    Frozen and hashable: the DiT keeps it as static configuration, so changing it retraces.
    """

    mesh: Mesh
    axis: str = CONTEXT_AXIS
    fsdp: bool = False

    @property
    def size(self) -> int:
        """Number of devices along the axis."""
        return self.mesh.shape[self.axis]

    def sharding(self, *spec) -> NamedSharding:
        """NamedSharding on the mesh for a PartitionSpec given as its entries (none: replicated)."""
        return NamedSharding(self.mesh, P(*spec))

    @property
    def replicated(self) -> NamedSharding:
        return self.sharding()

    def place(self, state: nnx.State) -> nnx.State:
        """The DiT's `state` on the mesh: replicated, or with FSDP the blocks' arrays split (the small embedders
        and final layer, ~0.3% of the weights, stay whole so that nothing outside the blocks needs a gather).
        Arrays already placed so are returned as they are, so this is cheap to repeat (e.g. after LoRAs are
        attached)."""
        return put(state, self.state_shardings(state))

    def state_shardings(self, state: nnx.State) -> nnx.State:
        """The NamedShardings `place` gives the DiT's `state` (arrays or abstract shapes), e.g. as the
        `out_shardings` of a jitted function that creates the weights directly on the mesh."""
        return param_shardings(state, self.mesh, self.axis, fsdp=self.fsdp and _in_blocks)

    def shard_tokens(self, x: jax.Array) -> jax.Array:
        """x [B, N, ...] split over the token axis."""
        return jax.lax.with_sharding_constraint(x, self.sharding(None, self.axis))

    def shard_heads(self, x: jax.Array) -> jax.Array:
        """x [B, N, H, D] split over the head axis (from token-split: one all-to-all).

        A head count the axis does not divide stays token-split here; `head_parallel` pads it first.
        """
        if x.shape[2] % self.size:
            return x
        return jax.lax.with_sharding_constraint(x, self.sharding(None, None, self.axis))

    def head_parallel(self, attention: Callable, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        """Runs attention(q, k, v) -> [B, Sq, H, D] per device on its slice of heads, all tokens local.

        q [B, Sq, H, D], k, v [B, Sk, H, D]. Heads are padded with zeros up to a multiple of the axis size
        (each head is independent, so the real heads' results do not change); the padding is cut off after
        the output is back to token-split, so every exchange is even.
        """
        heads = q.shape[2]
        padded = -(-heads // self.size) * self.size
        if padded != heads:
            pad = ((0, 0), (0, 0), (0, padded - heads), (0, 0))
            q, k, v = (jnp.pad(self.shard_tokens(t), pad) for t in (q, k, v))
        q, k, v = (self.shard_heads(t) for t in (q, k, v))
        spec = P(None, None, self.axis)
        # check_vma off: the attention may be a Pallas kernel, which does not track mesh-axis variance.
        local = jax.shard_map(attention, mesh=self.mesh, in_specs=(spec, spec, spec), out_specs=spec,
                              check_vma=False)
        out = local(q, k, v)
        if padded != heads:
            out = self.shard_tokens(out)[:, :, :heads]
        return out

    def gather_block(self, block: nnx.Module, x: jax.Array) -> tuple[nnx.Module, jax.Array]:
        """With FSDP: the block with its parameters all-gathered once `x` (its input) exists. Without: unchanged.

        Nothing else orders the gathers (the weights are inputs of the program), and a scheduler free to start
        every block's gather at once holds the whole model unsplit. So each split array gets a zero computed
        from `x` added to it, min(min |x[..., 0]|, 0) (zero for finite and infinite values alike; one scalar
        all-reduce), a data dependency every scheduler keeps, for one pass over 1/n of the block's weights. An
        optimization barrier would not do: XLA removes barriers before it schedules.
        """
        if not self.fsdp:
            return block, x
        graphdef, state = nnx.split(block)
        split = param_shardings(state, self.mesh, self.axis, fsdp=True)  # as `place` stored them
        anchor = jnp.minimum(jnp.min(jnp.abs(x[..., 0].astype(jnp.float32))), 0.0)
        state = jax.tree.map(lambda a: a + anchor.astype(a.dtype), state)
        state = jax.lax.with_sharding_constraint(state, split)
        state = jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, self.replicated), state)
        return nnx.merge(graphdef, state), x

def _in_blocks(path: tuple[str, ...]) -> bool:
    return path[0] == "blocks"
