"""The context-parallel DiT (longcat_jax.sharding) against the same DiT on one device, on 8 CPU devices.

conftest.py asks XLA for 8 host devices. Tiny models (one block) keep every compile to seconds; each case
compiles the single-device and the sharded forward once.
"""

import re

import jax
import numpy as np
import pytest
from flax import nnx

from kernels import BSAParams
from longcat_jax.errors import InputError
from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.loading import random_dit
from longcat_jax.models.dit.quantized_linear import quantize_linears
from longcat_jax.sharding import bytes_per_device, make_mesh, shard_dit

TOL = 2e-5  # float32: only the order of a few reductions may differ
GPU_TOL = 1e-4  # float32 on GPUs: matmuls of other row counts may pick other reduction orders
MESH_FP8_TOL = 1e-3  # relative L2, FP8 attention on the mesh: measured 1.5e-4; per-device scales gave 8.5e-3 here
BSA = BSAParams(sparsity=0.5, chunk_3d_shape_q=(2, 2, 2), chunk_3d_shape_k=(2, 2, 2))
COLLECTIVES = r"\b(all-to-all|all-gather|all-reduce|reduce-scatter|collective-permute)(?:-start)?\("

needs_8 = pytest.mark.skipif(
    jax.default_backend() != "cpu" or jax.device_count() < 8,
    reason="needs 8 CPU devices (conftest sets them); the gpu-marked tests cover GPUs",
)


def tiny_config(heads: int = 8, bsa: bool = True) -> DiTConfig:
    return DiTConfig(hidden_size=8 * heads, depth=1, num_heads=heads, caption_channels=16, adaln_tembed_dim=16,
                     frequency_embedding_size=32, enable_bsa=bsa, bsa_params=BSA, text_tokens_zero_pad=True)


def inputs(frames: int, seed: int = 0):
    """Batch 2 (like the CFG pair) with different text lengths; latent 8x16 -> a 4x8 token grid per frame."""
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((2, 16, frames, 4, 8)).astype(np.float32)
    timestep = np.array([700.0, 300.0], np.float32)
    text = rng.standard_normal((2, 1, 12, 16)).astype(np.float32)
    mask = (np.arange(12)[None] < np.array([[9], [4]])).astype(np.int32)
    return latents, timestep, text, mask


def compiled_forward(model, args, kv_cache=None, **flags):
    """The model's forward compiled for (latents, timestep, text, mask) `args` and `kv_cache`; flags
    (num_cond_latents, ...) are static. Returns (compiled, state): call compiled(state, args, kv_cache)."""
    graphdef, state = nnx.split(model)

    def forward(state, args, kv_cache):
        return nnx.merge(graphdef, state)(*args, kv_cache=kv_cache, **flags)

    return jax.jit(forward).lower(state, args, kv_cache).compile(), state


def run(model, args, kv_cache=None, **flags):
    compiled, state = compiled_forward(model, args, kv_cache, **flags)
    return compiled(state, args, kv_cache)


def assert_close(got, want, tol=TOL):
    got, want = np.asarray(got), np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())


@pytest.fixture(scope="module")
def model_pair():
    """The same random DiT twice: one stays on device 0, one is sharded over 8 devices."""
    single = random_dit(tiny_config())
    sharded = random_dit(tiny_config())
    shard_dit(sharded, make_mesh(8))
    return single, sharded


@needs_8
@pytest.mark.parametrize("bsa", [False, True], ids=["dense", "bsa"])
@pytest.mark.parametrize("num_cond_latents", [0, 2])
def test_sharded_forward_equals_single_device(model_pair, bsa, num_cond_latents):
    single, sharded = model_pair
    for model in model_pair:
        model.set_bsa(BSA if bsa else None)
    args = inputs(frames=8)
    want = run(single, args, num_cond_latents=num_cond_latents)
    compiled, state = compiled_forward(sharded, args, num_cond_latents=num_cond_latents)
    assert_close(compiled(state, args, None), want)
    # Communication: one all-to-all into self attention (q, k, v together) and one out, per block. With condition
    # frames the block's cross attention of the noisy tokens alone also moves tokens between neighbours
    # (collective-permutes and all-to-alls of that slice). Never a gather or reduction of activations.
    found = re.findall(COLLECTIVES, compiled.as_text())
    if num_cond_latents:
        assert set(found) <= {"all-to-all", "collective-permute"}, found
    else:
        assert found == ["all-to-all"] * (2 * len(sharded.blocks)), found


@needs_8
def test_fp8_attention_on_the_mesh_equals_one_device():
    """'fp8-attention' (its CPU emulation) on 8 devices gives one device's output, dense and block-sparse: dense FP8
    attention takes its per-tensor scales over all heads before they are split (over each device's own heads the
    output moved 7.7e-3, as much as FP8 attention itself), block-sparse FP8 scales each block of each head on its own.

    Within MESH_FP8_TOL, not float32's TOL: with the FP8 GEMMs writing bf16 (the default) the dense case moved 1.5e-4
    (its other cases 1.5e-7), as e4m3 rounding ties, frequent on bf16 values, fall either way; with float32 GEMM
    outputs all four cases were within 1.6e-7. Scales over each device's own heads moved the dense case 8.5e-3
    (BENCHMARKS.md, "CPU figures quoted in the README")."""
    config = DiTConfig(hidden_size=128, depth=1, num_heads=8, caption_channels=16, adaln_tembed_dim=16,
                       frequency_embedding_size=32, enable_bsa=True, bsa_params=BSA, text_tokens_zero_pad=True)
    single, sharded = random_dit(config), random_dit(config)
    for model in (single, sharded):
        quantize_linears(model, "fp8")
        model.set_fp8_attention(True)
    shard_dit(sharded, make_mesh(8))
    args = inputs(frames=4)
    for bsa in (None, BSA):
        for model in (single, sharded):
            model.set_bsa(bsa)
        assert rel_l2(run(sharded, args), run(single, args)) < MESH_FP8_TOL


@needs_8
def test_kv_cache_of_condition_frames(model_pair):
    single, sharded = model_pair
    for model in model_pair:
        model.set_bsa(BSA)
    latents, timestep, text, mask = inputs(frames=8, seed=1)
    cond_args = (latents[:, :, :2], np.zeros((2, 2), np.float32), np.zeros_like(text), None)
    want_out, want_cache = run(single, cond_args, return_kv=True, skip_crs_attn=True)
    got_out, got_cache = run(sharded, cond_args, return_kv=True, skip_crs_attn=True)
    assert_close(got_out, want_out)
    for got, want in zip(got_cache, want_cache):
        assert_close(got, want)
    noisy_args = (latents[:, :, 2:], timestep, text, mask)
    want = run(single, noisy_args, want_cache, num_cond_latents=2)
    assert_close(run(sharded, noisy_args, got_cache, num_cond_latents=2), want)


@needs_8
def test_fsdp_splits_the_blocks_gathers_one_at_a_time_and_gives_the_same_result():
    config = DiTConfig(hidden_size=256, depth=3, num_heads=8, caption_channels=16, adaln_tembed_dim=16,
                       frequency_embedding_size=32, text_tokens_zero_pad=True)
    single, split = random_dit(config), random_dit(config)
    shard_dit(split, make_mesh(8), fsdp=True)
    args = inputs(frames=8, seed=2)
    compiled, state = compiled_forward(split, args, num_cond_latents=2)
    assert_close(compiled(state, args, None), run(single, args, num_cond_latents=2))

    block_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(split.blocks)))
    other_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(split))) - block_bytes
    held = bytes_per_device(split)
    assert len(held) == 8
    # Every block array has a dimension 8 divides, except the per-head norm scales (32 floats each).
    assert max(held.values()) <= other_bytes + block_bytes / 8 + 2 * 32 * 4
    # Gathered weights live one block at a time: the program's scratch memory stays far below the 3 blocks.
    assert compiled.memory_analysis().temp_size_in_bytes < 0.6 * block_bytes


@needs_8
def test_heads_and_tokens_the_mesh_does_not_divide():
    """3 devices: 4 heads are padded to 6 for the attention, 8 x 32 = 256 tokens split unevenly (86, 86, 84)."""
    single = random_dit(tiny_config(heads=4))
    sharded = random_dit(tiny_config(heads=4))
    shard_dit(sharded, make_mesh(3))
    args = inputs(frames=8, seed=3)
    assert_close(run(sharded, args, num_cond_latents=2), run(single, args, num_cond_latents=2))


def test_mesh_sizes_that_do_not_fit_are_refused():
    with pytest.raises(InputError, match="positive"):
        make_mesh(0)
    with pytest.raises(InputError, match=f"only {jax.device_count()}"):
        make_mesh(jax.device_count() + 1)
    assert make_mesh().size == jax.device_count()
    assert make_mesh(1).size == 1


GPU_CONFIG = DiTConfig(
    hidden_size=512, depth=2, num_heads=8, caption_channels=16, adaln_tembed_dim=16, frequency_embedding_size=32,
    enable_bsa=True, bsa_params=BSAParams(sparsity=0.5, chunk_3d_shape_q=(4, 4, 4), chunk_3d_shape_k=(4, 4, 4)),
    text_tokens_zero_pad=True,
)


def gpu_count() -> int:
    return sum(d.platform == "gpu" for d in jax.devices())


@pytest.mark.gpu
@pytest.mark.skipif(gpu_count() < 2, reason="needs at least 2 GPUs")
@pytest.mark.parametrize("fsdp", [False, True], ids=["replicated", "fsdp"])
def test_gpus_sharded_forward_and_kv_cache_equal_one_gpu(fsdp):
    """On every GPU: head_dim 64 and 4x4x4 chunks, so BSA runs the Pallas kernel per device under shard_map."""
    single, sharded = random_dit(GPU_CONFIG), random_dit(GPU_CONFIG)
    shard_dit(sharded, make_mesh(gpu_count()), fsdp=fsdp)
    rng = np.random.default_rng(6)
    latents = rng.standard_normal((2, 16, 12, 16, 16)).astype(np.float32)  # token grid 12 x 8 x 8
    timestep = np.array([700.0, 300.0], np.float32)
    text = rng.standard_normal((2, 1, 12, 16)).astype(np.float32)
    mask = (np.arange(12)[None] < np.array([[9], [4]])).astype(np.int32)
    args = (latents, timestep, text, mask)
    for num_cond_latents in (0, 4):
        assert_close(run(sharded, args, num_cond_latents=num_cond_latents),
                     run(single, args, num_cond_latents=num_cond_latents), GPU_TOL)
    cond_args = (latents[:, :, :4], np.zeros((2, 4), np.float32), np.zeros_like(text), None)
    _, want_cache = run(single, cond_args, return_kv=True, skip_crs_attn=True)
    _, got_cache = run(sharded, cond_args, return_kv=True, skip_crs_attn=True)
    noisy_args = (latents[:, :, 4:], timestep, text, mask)
    assert_close(run(sharded, noisy_args, got_cache, num_cond_latents=4),
                 run(single, noisy_args, want_cache, num_cond_latents=4), GPU_TOL)
