"""LoRA gradients (and only those) through block-sparse attention in conditioned training: the Pallas kernels'
backward, run by the interpreter on the CPU, with per-block rematerialisation, against the jnp reference."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kernels import BSAParams
from longcat_jax.metrics import rel_l2
from longcat_jax.training.config import LoRAConfig, OptimizerConfig
from longcat_jax.training.objective import SigmaSampling
from longcat_jax.training.remat import rematerialize_blocks
from longcat_jax.training.step import StepSpec, micro_batch_loss
from longcat_jax.training.trainable_lora import attach_trainable_lora, split_trainable
from tests.training.synthetic import batch_of, small_dit, smooth_clip

# head_dim 64 and 16-token chunks: what the Pallas kernels take. Latents 4x8x8 -> tokens (4, 4, 4), the first two
# latent frames clean conditions (as continuation trains): condition queries over 2 key chunks, generated queries
# over 4, each keeping half.
BSA = BSAParams(sparsity=0.5, cdf_threshold=None, chunk_3d_shape_q=(1, 4, 4), chunk_3d_shape_k=(1, 4, 4))
TARGETS = ("attn.qkv", "attn.proj", "ffn.w2")  # before, after and past self attention
SPEC = StepSpec(OptimizerConfig(learning_rate=1e-3), steps=10, sigma=SigmaSampling("uniform"), num_cond_latents=2)


def _first_micro_batch():
    return {name: jnp.asarray(array[0]) for name, array in dataclasses.asdict(batch_of([smooth_clip(0, (16, 4, 8, 8))])).items()}


def _lora_model(*, remat: bool = False, **config):
    """A small DiT with a rank-4 LoRA on `TARGETS` whose up factors are nonzero (as after some training), so every
    factor gets a gradient."""
    dit = small_dit(**config)
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
