"""LoRA gradients (and only those) through block-sparse attention in conditioned training: the Pallas kernels'
backward, run by the interpreter on the CPU, with per-block rematerialisation, against the jnp reference; and the
backward kernels that the config's `bsa.backward` picks."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kernels import BSAParams, KernelConfig
from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit.loading import random_dit
from longcat_jax.training.config import DataConfig, LoRAConfig, OptimizerConfig, TrainConfig
from longcat_jax.training.models import prepare_base_dit
from longcat_jax.training.objective import SigmaSampling
from longcat_jax.training.remat import rematerialize_blocks
from longcat_jax.training.step import StepSpec, micro_batch_loss
from longcat_jax.training.trainable_lora import attach_trainable_lora, split_trainable
from tests.training.synthetic import batch_of, small_dit, small_dit_config, smooth_clip

# head_dim 64 and 16-token chunks: what the Pallas kernels take. Latents 4x8x8 -> tokens (4, 4, 4), the first two
# latent frames clean conditions (as continuation trains): condition queries over 2 key chunks, generated queries
# over 4, each keeping half.
BSA = BSAParams(sparsity=0.5, cdf_threshold=None, chunk_3d_shape_q=(1, 4, 4), chunk_3d_shape_k=(1, 4, 4))
TARGETS = ("attn.qkv", "attn.proj", "ffn.w2")  # before, after and past self attention
SPEC = StepSpec(OptimizerConfig(learning_rate=1e-3), steps=10, sigma=SigmaSampling("uniform"), num_cond_latents=2)


def _first_micro_batch(latent_shape=(16, 4, 8, 8)):
    return {name: jnp.asarray(array[0]) for name, array in dataclasses.asdict(batch_of([smooth_clip(0, latent_shape)])).items()}


def _lora_model(*, remat: bool = False, dit=None, **config):
    """A small DiT (`dit`, or one of `config`) with a rank-4 LoRA on `TARGETS` whose up factors are nonzero (as after
    some training), so every factor gets a gradient."""
    dit = dit or small_dit(**config)
    attach_trainable_lora(dit, LoRAConfig(rank=4, alpha=4, targets=TARGETS), seed=1)
    if remat:
        rematerialize_blocks(dit)
    graphdef, factors, frozen = split_trainable(dit)
    keys = iter(jax.random.split(jax.random.key(2), 64))
    factors = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), factors)
    return dit, graphdef, factors, frozen


def _lora_grads(backend: str, *, remat: bool):
    dit, _, factors, frozen = _lora_model(remat=remat, hidden=64, heads=1, bsa=BSA)
    dit.set_bsa(BSA, backend=backend)
    graphdef = split_trainable(dit)[0]
    micro = _first_micro_batch()

    @jax.jit
    def grads(factors):
        return jax.grad(lambda f: micro_batch_loss(nnx.merge(graphdef, f, frozen), micro, jax.random.key(4), SPEC))(factors)

    return factors, frozen, grads(factors)


@pytest.mark.slow
def test_lora_gradients_through_the_pallas_bsa_backward_match_the_reference_with_remat():
    # The Pallas kernels (forward, Triton backward; interpreted on the CPU) with per-block remat, against the jnp
    # reference without it: equal gradients check both the kernels' backward and that remat changes nothing.
    factors, frozen, reference = _lora_grads("reference", remat=False)
    _, _, pallas = _lora_grads("pallas_interpret", remat=True)
    assert jax.tree.structure(reference) == jax.tree.structure(factors)  # gradients of the LoRA factors only
    frozen_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(frozen)[0]]
    assert all("loras" not in p or "scale" in p for p in frozen_paths)  # of the LoRA, only its scales are frozen
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(reference)[0]]
    assert len(paths) == 2 * len(TARGETS) and all("loras" in p for p in paths)
    for name, got, want in zip(paths, jax.tree.leaves(pallas), jax.tree.leaves(reference)):
        assert np.all(np.isfinite(np.asarray(got))) and float(jnp.abs(want).max()) > 0, name
        assert rel_l2(got, want) < 1e-4, (name, rel_l2(got, want))


# What the Mosaic GPU backward takes: 64-token chunks, head_dim 64, bf16 q, k, v. Latents 4x16x16 -> tokens (4, 8, 8),
# 4 blocks; the two condition frames' grid (2, 8, 8) is padded to whole chunks (their key padding masked).
MOSAIC_BSA = BSAParams(sparsity=0.5, cdf_threshold=None, chunk_3d_shape_q=(4, 4, 4), chunk_3d_shape_k=(4, 4, 4))


def _traced_gradients(backward: str):
    """The traced LoRA-factor and latent gradients of a bf16 DiT set up as training sets it up (`prepare_base_dit`)
    with `bsa.backward` = `backward`, on the interpreted Pallas kernels."""
    config = TrainConfig(data=DataConfig(folder=Path("clips")), dtype="bfloat16", bsa=MOSAIC_BSA,
                         bsa_backend="pallas_interpret", bsa_backward=backward)
    dit = prepare_base_dit(random_dit(small_dit_config(hidden=64, heads=1, bsa=MOSAIC_BSA), dtype=jnp.bfloat16), config)
    assert dit.bsa_kernel_config == KernelConfig(backward=backward)
    _, graphdef, factors, frozen = _lora_model(dit=dit)
    micro = _first_micro_batch((16, 4, 16, 16))

    def loss(factors, latent_mean):
        model = nnx.merge(graphdef, factors, frozen)
        return micro_batch_loss(model, {**micro, "latent_mean": latent_mean}, jax.random.key(4), SPEC)

    return str(jax.jit(jax.grad(loss, argnums=(0, 1))).trace(factors, micro["latent_mean"]).jaxpr)


def test_the_configs_bsa_backward_reaches_the_kernels():
    # Each backward's kernels are in the traced gradient program exactly when the config asks for it ("auto" is the
    # Triton one under the interpreter). That the Mosaic GPU backward gives the Triton one's gradients, on padded
    # grids too, is checked at the kernels' level (tests/kernels/test_bsa_mosaic_backward.py).
    for backward, triton, mosaic in (("triton", True, False), ("mosaic", False, True), ("auto", True, False)):
        program = _traced_gradients(backward)
        assert ("bsa_backward_dq" in program) == triton, backward
        assert ("name=bsa_mosaic_backward" in program) == mosaic, backward
