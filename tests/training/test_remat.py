"""Remat modes: with "block_keep_attention" the backward pass recomputes each DiT block without its self attention's
forward (kept: the attention's output and softmax statistics), with "block_and_sublayers" the self attention once more
in its own backward, and every mode gives the same gradients.

The attention forwards are counted in the jaxpr of the gradient after dead-code elimination, as XLA compiles it.
JAX never drops a `pallas_call` from a jaxpr (Pallas's DCE rule keeps every kernel, since a kernel may write refs),
while XLA removes an unused custom call without side effects (which is what our BSA kernels lower to on a GPU); the
count is taken with that rule lifted, so it sees the kernels the compiled program runs.
"""

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax._src import core as jax_core
from jax._src.cudnn import fused_attention_stablehlo
from jax._src.interpreters import partial_eval
from jax._src.pallas.pallas_call import pallas_call_p

from kernels import BSAParams
from longcat_jax.errors import ConfigError
from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit import attention
from longcat_jax.models.dit.attention import SelfAttention
from longcat_jax.models.dit.block import FeedForwardSwiGLU
from longcat_jax.models.dit.loading import random_dit
from longcat_jax.training.config import REMAT_MODES, LoRAConfig, OptimizerConfig
from longcat_jax.training.objective import SigmaSampling
from longcat_jax.training.remat import (
    CUDNN_ATTENTION_FORWARD,
    RecomputedFeedForward,
    RecomputedSelfAttention,
    rematerialize_blocks,
)
from longcat_jax.training.step import StepSpec, micro_batch_loss
from longcat_jax.training.trainable_lora import attach_trainable_lora, split_trainable
from tests.training.synthetic import batch_of, small_dit, small_dit_config, smooth_clip

# head_dim 64 and 16-token chunks (what the Pallas kernels take); latents 4x8x8 -> 64 tokens, text of 24 tokens (not
# 64: the policy tells the self attention's cuDNN call from the cross attention's by the key length).
BSA = BSAParams(sparsity=0.5, cdf_threshold=None, chunk_3d_shape_q=(1, 4, 4), chunk_3d_shape_k=(1, 4, 4))
TEXT_LENGTH = 24
TARGETS = ("attn.qkv", "attn.proj", "cross_attn.q_linear", "ffn.w2")


def _spec(num_cond_latents: int) -> StepSpec:
    return StepSpec(OptimizerConfig(), steps=10, sigma=SigmaSampling("uniform"), num_cond_latents=num_cond_latents)


def _gradient(mode: str, *, depth: int = 1, bsa: BSAParams | None = None, backend: str = "auto",
              num_cond_latents: int = 2, dtype=jnp.float32):
    """(grad of the LoRA factors as a function of them, the factors) of a small DiT remat'ed as `mode`; the up
    factors are nonzero (as after some training), so every factor gets a gradient."""
    dit = random_dit(small_dit_config(hidden=64, heads=1, depth=depth, bsa=bsa), dtype=dtype)
    attach_trainable_lora(dit, LoRAConfig(rank=4, alpha=4, targets=TARGETS), seed=1)
    if bsa is not None:
        dit.set_bsa(bsa, backend=backend)
    rematerialize_blocks(dit, mode)
    graphdef, factors, frozen = split_trainable(dit)
    keys = iter(jax.random.split(jax.random.key(2), 64))
    factors = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), factors)
    clip = batch_of([smooth_clip(0, (16, 4, 8, 8))], text_length=TEXT_LENGTH)
    micro = {name: jnp.asarray(array[0]) for name, array in dataclasses.asdict(clip).items()}
    spec = _spec(num_cond_latents)

    def gradient(factors):
        return jax.grad(lambda f: micro_batch_loss(nnx.merge(graphdef, f, frozen), micro, jax.random.key(4), spec))(
            factors)

    return gradient, factors


def _live_equations(gradient, factors, monkeypatch) -> list:
    """Every equation (nested ones included) of the gradient's jaxpr that the compiled program runs."""
    monkeypatch.delitem(partial_eval.dce_rules, pallas_call_p, raising=False)  # unused kernels are dropped, as XLA drops them
    closed = jax.make_jaxpr(gradient)(factors)
    jaxpr, _ = partial_eval.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            found.append(eqn)
            for inner in jax_core.jaxprs_in_params(eqn.params):
                walk(inner)

    walk(jaxpr)
    return found


def _kernel_name(eqn) -> str:
    """A `pallas_call`'s kernel name (the parameter is `name` in some JAX versions, `name_and_src_info` in others)."""
    info = eqn.params.get("name_and_src_info", eqn.params.get("name"))
    return getattr(info, "name", info)


def _pallas_kernels(equations) -> collections.Counter:
    """Calls per Pallas kernel name."""
    return collections.Counter(_kernel_name(eqn) for eqn in equations if eqn.primitive is pallas_call_p)


def _cudnn_forwards(equations) -> collections.Counter:
    """cuDNN attention forwards by what their keys are: "self" (the video tokens) or "cross" (the text)."""
    kinds = ("cross" if eqn.invars[1].aval.shape[1] == TEXT_LENGTH else "self"
             for eqn in equations if eqn.primitive.name.startswith(CUDNN_ATTENTION_FORWARD))
    return collections.Counter(kinds)


def test_keep_attention_runs_the_bsa_forward_kernel_once(monkeypatch):
    # Two block-sparse attentions per block (the condition frames' queries and the others'): without remat each
    # kernel runs once, remat'ing the whole block runs it again in the backward pass, keeping the attention does not.
    forwards = {}
    for mode in REMAT_MODES:
        kernels = _pallas_kernels(_live_equations(*_gradient(mode, bsa=BSA, backend="pallas_interpret"), monkeypatch))
        assert kernels["bsa_backward_dq"] == kernels["bsa_backward_dkdv"] == 2, kernels
        forwards[mode] = kernels["bsa_forward"]
    # "block_and_sublayers": once more, in the attention's own backward
    assert forwards == {"none": 2, "block": 4, "block_keep_attention": 2, "block_and_sublayers": 6}


def _trace_cudnn_on_the_cpu(monkeypatch):
    """Lets the DiT's dense attention take cuDNN's fused attention while tracing on a CPU (nothing is compiled)."""
    monkeypatch.setattr(fused_attention_stablehlo, "check_cudnn_version", lambda: 90800)
    monkeypatch.setattr(attention, "dense_attention",
                        lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"))


def test_keep_attention_runs_the_cudnn_self_attention_forward_once_per_block(monkeypatch):
    # Two blocks, t2v: the self attention's forward runs once per block with the attention kept, twice with whole
    # blocks recomputed; the cross attention (the same cuDNN call, over the text) is recomputed either way.
    _trace_cudnn_on_the_cpu(monkeypatch)
    counts = {mode: _cudnn_forwards(_live_equations(
        *_gradient(mode, depth=2, num_cond_latents=0, dtype=jnp.bfloat16), monkeypatch)) for mode in REMAT_MODES}
    assert counts["none"] == {"self": 2, "cross": 2}
    assert counts["block"] == {"self": 4, "cross": 4}
    assert counts["block_keep_attention"] == {"self": 2, "cross": 4}
    assert counts["block_and_sublayers"] == {"self": 6, "cross": 4}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bsa", "backend", "modes"),
    [(BSA, "pallas_interpret", ("block", "block_keep_attention", "block_and_sublayers")),
     (None, "auto", ("block", "block_and_sublayers", "none"))],
    ids=["bsa_pallas", "dense"],
)
def test_every_remat_mode_gives_the_same_gradients(bsa, backend, modes):
    # Float32 on the CPU, against whole-block remat. The kept attention is checked where it changes the program, the
    # Pallas BSA kernels (on the CPU the XLA attention keeps nothing, so there "block_keep_attention" is "block"; the
    # cuDNN case is the GPU test below); the nested recomputation of "block_and_sublayers" on both; "none" on the
    # dense DiT.
    grads = {}
    for mode in modes:
        gradient, factors = _gradient(mode, bsa=bsa, backend=backend)
        grads[mode] = jax.jit(gradient)(factors)
    reference = grads["block"]
    for mode in modes:
        for got, want in zip(jax.tree.leaves(grads[mode]), jax.tree.leaves(reference), strict=True):
            assert float(jnp.abs(want).max()) > 0
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7, err_msg=mode)


def test_switching_modes_sets_and_restores_the_sublayer_classes():
    dit = small_dit()
    rematerialize_blocks(dit, "block_and_sublayers")
    assert all(isinstance(b.attn, RecomputedSelfAttention) and isinstance(b.ffn, RecomputedFeedForward)
               for b in dit.blocks)
    rematerialize_blocks(dit, "block")
    assert all(type(b.attn) is SelfAttention and type(b.ffn) is FeedForwardSwiGLU for b in dit.blocks)


def test_an_unknown_mode_is_refused():
    with pytest.raises(ConfigError, match="block_keep_attention"):
        rematerialize_blocks(small_dit(), "attention")


@pytest.mark.gpu
def test_on_the_gpu_the_cudnn_self_attention_forward_runs_once_per_block(monkeypatch):
    # The real cuDNN path of this JAX (bf16 on a GPU picks it): the policy finds its forward primitive, and the
    # gradients equal those of whole-block remat.
    counts, grads = {}, {}
    for mode in ("block", "block_keep_attention"):
        gradient, factors = _gradient(mode, depth=2, num_cond_latents=0, dtype=jnp.bfloat16)
        counts[mode] = _cudnn_forwards(_live_equations(gradient, factors, monkeypatch))
        grads[mode] = jax.jit(gradient)(factors)
    assert counts == {"block": {"self": 4, "cross": 4}, "block_keep_attention": {"self": 2, "cross": 4}}
    for got, want in zip(jax.tree.leaves(grads["block_keep_attention"]), jax.tree.leaves(grads["block"]), strict=True):
        assert rel_l2(got, want) < 1e-2
