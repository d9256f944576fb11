"""The DiT with its blocks' weights in pinned host memory, each block copied to the device just before it runs.

    streamed = StreamedDiT(dit)                      # blocks' weights -> pinned host memory, the rest -> the device
    out = streamed(latents, timestep, text, mask)    # the call and the result of dit(latents, timestep, text, mask)

A call runs three compiled functions: the DiT's input layers (`LongCatDiT.embed`), one block, which every block
shares (they have one structure, so one compilation runs them all, each with its own weights), and the output
layers (`unembed`). Before block i runs, the weights of blocks i+1 .. i+prefetch are put on the device
(`jax.device_put` to device memory: asynchronous; on a GPU the copy from pinned memory runs on the transfer stream
while block i computes), and once block i has finished its weights are dropped. Python waits for each block
before queueing the next copy; without that wait JAX's asynchronous dispatch would queue every copy at once and
the device would hold the whole model. So the device holds at most `prefetch + 1` blocks' weights.

`prefetch=0` copies each block only when it is about to run, so copy and compute take turns: the step time
without overlap, against which `benchmarks/memory_budget.py` measures the overlap.

On the CPU the host and device memories are one RAM: the copies and the prefetch order run as on a GPU, but
nothing is saved; only a GPU shows the overlap and the device-memory saving.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import SingleDeviceSharding

from longcat_jax.errors import ConfigError
from longcat_jax.memory.device import PINNED_HOST, has_memory_kind
from longcat_jax.memory.sizes import format_size
from longcat_jax.models.dit.transformer import DiTEnds, KVCache, LongCatDiT
from longcat_jax.quantization.compile_options import quantized_jit

logger = logging.getLogger(__name__)


@functools.partial(quantized_jit, static_argnames=("graphdef", "grid"))
def _embed(graphdef, state, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, *, grid):
    return nnx.merge(graphdef, state).embed(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                                            grid)


@functools.partial(quantized_jit, static_argnames=("graphdef", "grid", "bsa", "bsa_backend", "bsa_kernel_config",
                                             "num_cond_latents", "return_kv", "skip_crs_attn"), donate_argnums=(2,))
def _run_block(graphdef, state, x, text, text_mask, t_emb, kv_cache, *, grid, bsa, bsa_backend, bsa_kernel_config,
               num_cond_latents, return_kv, skip_crs_attn):
    block = nnx.merge(graphdef, state)
    return block(x, text, text_mask, t_emb, grid, bsa=bsa, bsa_backend=bsa_backend,
                 bsa_kernel_config=bsa_kernel_config, num_cond_latents=num_cond_latents, kv_cache=kv_cache,
                 return_kv=return_kv, skip_crs_attn=skip_crs_attn)


@functools.partial(quantized_jit, static_argnames=("graphdef", "grid"))
def _unembed(graphdef, state, x, t_emb, *, grid):
    return nnx.merge(graphdef, state).unembed(x, t_emb, grid)


@dataclasses.dataclass
class StreamCounters:
    """What a `StreamedDiT` has done: forward calls and bytes copied host -> device."""

    calls: int = 0
    bytes_copied: int = 0


class StreamedDiT:
    """Runs `dit` with its blocks' weights streamed from pinned host memory (see the module docstring).

    Moves the weights in place: the DiT's blocks then hold host arrays, its embedders and final layer device ones,
    so the DiT itself must not be run resident afterwards (make a new StreamedDiT after changing its LoRAs; its
    BSA setting is read at every call). `device`: where the blocks run (default: the first local device).
    """

    def __init__(self, dit: LongCatDiT, *, prefetch: int = 1, device: jax.Device | None = None):
        if dit.context_parallel is not None:
            raise ConfigError("streaming the DiT's weights runs on one device; it cannot be combined with context "
                              "parallelism (--context-parallel 1, or leave --max-device-memory out)")
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ConfigError(f"prefetch must be a block count >= 0, got {prefetch!r}")
        device = device or jax.local_devices()[0]
        if not has_memory_kind(device, PINNED_HOST):
            raise ConfigError(f"{device.device_kind} has no pinned host memory to stream the DiT's weights from; "
                              "run with a budget that holds the weights (or --quantize int8 to halve them)")
        self.dit = dit
        self.prefetch = prefetch
        self.device_sharding = SingleDeviceSharding(device, memory_kind=device.default_memory().kind)
        self.host_sharding = SingleDeviceSharding(device, memory_kind=PINNED_HOST)
        ends = DiTEnds.of(dit)
        self._ends_graphdef, ends_state = nnx.split(ends)
        self._ends_state = jax.device_put(ends_state, self.device_sharding)
        nnx.update(ends, self._ends_state)
        self._blocks = []
        for block in dit.blocks:
            graphdef, state = nnx.split(block)
            state = jax.device_put(state, self.host_sharding)
            nnx.update(block, state)  # the DiT now holds the host copy; a device copy it held is freed
            self._blocks.append((graphdef, state))
        self.block_bytes = [sum(leaf.nbytes for leaf in jax.tree.leaves(state)) for _, state in self._blocks]
        self.counters = StreamCounters()
        logger.info("DiT weights streamed from pinned host memory: %d blocks of up to %s (LoRA factors included), "
                    "%s per step, %d prefetched", len(self._blocks), format_size(max(self.block_bytes)),
                    format_size(sum(self.block_bytes)), prefetch)

    @property
    def config(self):
        return self.dit.config

    @property
    def dtype(self):
        return self.dit.dtype

    @property
    def bytes_per_call(self) -> int:
        """Bytes copied host -> device by one forward: every block's weights."""
        return sum(self.block_bytes)

    def _fetch(self, index: int):
        self.counters.bytes_copied += self.block_bytes[index]
        return jax.device_put(self._blocks[index][1], self.device_sharding)

    def _stream(self) -> Iterator[tuple[int, nnx.State]]:
        """(index, block weights on the device) in block order, the next `prefetch` blocks' copies queued before
        each is handed out. The caller drops each block's weights and waits for the block before the next one."""
        depth = len(self._blocks)
        queued: collections.deque = collections.deque()
        for index in range(depth):
            while len(queued) < self.prefetch + 1 and index + len(queued) < depth:
                queued.append(self._fetch(index + len(queued)))
            yield index, queued.popleft()

    def __call__(self, hidden_states: jax.Array, timestep: jax.Array, encoder_hidden_states: jax.Array,
                 encoder_attention_mask: jax.Array | None = None, *, num_cond_latents: int = 0,
                 kv_cache: KVCache | None = None, return_kv: bool = False,
                 skip_crs_attn: bool = False) -> jax.Array | tuple[jax.Array, KVCache]:
        """`LongCatDiT.__call__`, with the blocks' weights streamed."""
        dit = self.dit
        grid = dit.token_grid(hidden_states, timestep, encoder_hidden_states, num_cond_latents=num_cond_latents,
                              kv_cache=kv_cache)
        inputs = [self._on_device(a) for a in (hidden_states, timestep, encoder_hidden_states, encoder_attention_mask)]
        x, t_emb, text, text_mask = _embed(self._ends_graphdef, self._ends_state, *inputs, grid=grid)
        settings = dict(grid=grid, bsa=dit.bsa, bsa_backend=dit.bsa_backend, bsa_kernel_config=dit.bsa_kernel_config,
                        num_cond_latents=num_cond_latents, return_kv=return_kv, skip_crs_attn=skip_crs_attn)
        keys, values = [], []
        for index, weights in self._stream():
            cache = None if kv_cache is None else (kv_cache[0][index], kv_cache[1][index])
            x, new_cache = _run_block(self._blocks[index][0], weights, x, text, text_mask, t_emb, cache, **settings)
            del weights
            x.block_until_ready()  # block i done, its weights freed: only now may the copy after next be queued
            if return_kv:
                keys.append(new_cache[0])
                values.append(new_cache[1])
        self.counters.calls += 1
        out = _unembed(self._ends_graphdef, self._ends_state, x, t_emb, grid=grid)
        if return_kv:
            return out, (jnp.stack(keys), jnp.stack(values))
        return out

    def _on_device(self, x):
        return x if x is None else jax.device_put(x, self.device_sharding)
