"""The DiT with its blocks streamed from pinned host memory gives the resident DiT's output, holds at most
`prefetch + 1` blocks on the device, and compiles one block function for all blocks."""

import jax
import numpy as np
import pytest
from flax import nnx

from longcat_jax.errors import ConfigError
from longcat_jax.memory import streaming
from longcat_jax.memory.streaming import StreamedDiT
from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit.lora import enable_loras, random_lora
from longcat_jax.models.dit.quantized_linear import quantize_linears
from tests.memory.dit_inputs import inputs, tiny_dit


def _resident(dit, *args, **kwargs):
    return nnx.jit(lambda m, *a: m(*a, **kwargs))(dit, *args)


def _assert_same(got, want):
    """Bit-exact, or within 1e-6 relative L2 in float32 (the issue's bound)."""
    got, want = np.asarray(got), np.asarray(want)
    if not np.array_equal(got, want):
        assert rel_l2(got, want) <= 1e-6


@pytest.mark.parametrize(("prefetch", "bsa"), [(0, False), (1, True), (2, False)])
def test_streamed_equals_resident(prefetch, bsa):
    dit = tiny_dit(bsa=bsa)
    args = inputs(dit)
    want = _resident(dit, *args)
    streamed = StreamedDiT(dit, prefetch=prefetch)
    _assert_same(streamed(*args), want)
    assert streamed.counters.calls == 1
    assert streamed.counters.bytes_copied == streamed.bytes_per_call == sum(streamed.block_bytes)


def test_streamed_condition_frames_and_kv_cache_equal_resident():
    dit = tiny_dit()
    latents, timestep, text, mask = inputs(dit)
    cond, noisy = latents[:, :, :2], latents[:, :, 2:]
    with_cond = _resident(dit, latents, timestep, text, mask, num_cond_latents=1)
    _, cache = _resident(dit, cond, timestep * 0, text, None, return_kv=True, skip_crs_attn=True)
    continued = _resident(dit, noisy, timestep, text, mask, num_cond_latents=2, kv_cache=cache)
    streamed = StreamedDiT(dit)
    _assert_same(streamed(latents, timestep, text, mask, num_cond_latents=1), with_cond)
    _, streamed_cache = streamed(cond, timestep * 0, text, None, return_kv=True, skip_crs_attn=True)
    jax.tree.map(_assert_same, streamed_cache, cache)
    _assert_same(streamed(noisy, timestep, text, mask, num_cond_latents=2, kv_cache=streamed_cache), continued)


def test_streamed_with_loras_chunks_and_int8_weights_equals_resident():
    dit = tiny_dit()
    quantize_linears(dit, "int8")
    enable_loras(dit, [random_lora(dit.config, "style", seed=3)])
    dit.set_token_chunking(64)
    args = inputs(dit)
    want = _resident(dit, *args)
    _assert_same(StreamedDiT(dit)(*args), want)


def test_weights_move_to_pinned_host_memory_and_the_rest_to_the_device():
    dit = tiny_dit()
    StreamedDiT(dit)
    block_kinds = {leaf.sharding.memory_kind for leaf in jax.tree.leaves(nnx.state(dit.blocks))}
    end_kinds = {leaf.sharding.memory_kind for leaf in jax.tree.leaves(nnx.state(dit.final_layer))}
    assert block_kinds == {"pinned_host"}
    assert end_kinds == {jax.local_devices()[0].default_memory().kind}


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_at_most_prefetch_plus_one_blocks_are_on_the_device(monkeypatch, prefetch):
    """Counted on the live device arrays of a block kernel's shape each time a block runs (on the CPU the memory
    kinds are real, so the count is what a GPU would hold; only a GPU shows the bytes it saves)."""
    dit = tiny_dit(depth=5)
    args = inputs(dit)
    shape = dit.blocks[0].ffn.w2.kernel.get_value().shape  # [ffn, hidden]: no other weight has it
    device_kind = jax.local_devices()[0].default_memory().kind
    counts = []
    run_block = streaming._run_block

    def on_device() -> int:
        return sum(1 for a in jax.live_arrays() if a.shape == shape and a.sharding.memory_kind == device_kind)

    def counting(*block_args, **kwargs):
        counts.append(on_device() - before)
        return run_block(*block_args, **kwargs)

    streamed = StreamedDiT(dit, prefetch=prefetch)
    # Arrays of that shape that other tests in this process keep alive are not this DiT's blocks.
    before = on_device()
    monkeypatch.setattr(streaming, "_run_block", counting)
    streamed(*args)
    assert len(counts) == 5
    assert max(counts) == min(prefetch + 1, 5)


def test_one_compiled_block_serves_every_block():
    dit = tiny_dit(depth=4)
    args = inputs(dit, batch=1, frames=3)  # a shape no other test compiles
    compiled = streaming._run_block.default_jit  # `quantized_jit`'s program for weights without FP8 (as here)
    before = compiled._cache_size()
    StreamedDiT(dit)(*args)
    assert compiled._cache_size() - before == 1


def test_streaming_refuses_context_parallelism_and_bad_prefetch():
    dit = tiny_dit()
    with pytest.raises(ConfigError, match="prefetch"):
        StreamedDiT(dit, prefetch=-1)
    dit.context_parallel = object()
    with pytest.raises(ConfigError, match="context parallel"):
        StreamedDiT(dit)
