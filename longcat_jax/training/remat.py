"""Rematerialisation per DiT block: the backward pass recomputes each block's activations from its input.

Without it a training step keeps every intermediate of all 48 blocks alive for the backward pass (tens of GB
at 480p); with it, only each block's input is kept and one block's intermediates exist at a time. The blocks are
switched in place to a subclass whose call runs under `jax.checkpoint`, so module paths (and with them LoRA names,
checkpoints and sharding rules) stay unchanged and the forward computes the same values.

Modes (`training.remat` of the config):
  "block_keep_attention"  each block is recomputed except its self attention: per block the attention's output and
                          softmax statistics (what its backward needs besides q, k, v) are kept, so the recomputation
                          runs the GEMMs, norms, modulation, cross attention and FFN again but not the attention, about
                          half of a 480p block's FLOPs. Extra memory: per block, tokens x hidden in the compute dtype
                          plus tokens x heads float32 (48 x N x (4096 x 2 + 32 x 4) bytes for the bf16 13.6B DiT:
                          13.9 GiB at 37,440 tokens). Kept for the attentions that have such a forward: cuDNN's fused
                          attention (dense, bf16/fp16 on a GPU) and the Pallas BSA kernels; the XLA attention (CPU,
                          float32) and the BSA reference keep nothing, their softmax being [N, N] per head.
  "block"                 (the default) each whole block is recomputed (only its input is kept);
                          "block_keep_attention" is the faster choice where its memory fits (480p on an 80 GB GPU).
  "block_and_sublayers"   as "block", and inside a block's backward its self attention and its FFN are recomputed
                          once more from their own inputs: the least memory. Under "block" one block's backward holds
                          every intermediate of that block at once (the FFN's backward runs while the self attention's
                          qkv, rotated q/k and chunk-ordered q/k/v wait for theirs): 21.6 GiB at 84,480 tokens for the
                          13.6B DiT, beside the 31 GiB of block inputs (XLA's buffer assignment for an H100; the 720p
                          step's temporaries came to 54.4 GiB, and XLA on an H200 failed to allocate 54.47 GiB).
                          Nested, the two never overlap: 14.2 GiB, 47.6 GiB in all. The cost: a third forward of the
                          self attention (BSA kernel included) and of the FFN, about 0.8 of a block's forward FLOPs.
  "none"                  nothing is recomputed (every intermediate of every block stays alive).
"""

from __future__ import annotations

import jax
from flax import nnx

from kernels import BSA_RESIDUAL_NAMES
from longcat_jax.errors import ConfigError
from longcat_jax.models.dit.attention import SelfAttention
from longcat_jax.models.dit.block import DiTBlock, FeedForwardSwiGLU
from longcat_jax.models.dit.transformer import LongCatDiT
from longcat_jax.training.config import REMAT_MODES

# The primitive of cuDNN's fused attention forward (`jax.nn.dot_product_attention(implementation="cudnn")`); its
# outputs are the attention's output and the softmax statistics its backward reads.
CUDNN_ATTENTION_FORWARD = "dot_product_attention_fwd"


def keep_self_attention_policy(text_length: int):
    """A `jax.checkpoint` policy that saves the self attention's residuals and nothing else.

    Saved: the values named `kernels.BSA_RESIDUAL_NAMES` (the Pallas BSA forward's output and log-sum-exp) and the
    outputs of cuDNN's attention forward whose keys are not the `text_length` text tokens (the cross attention over
    the text takes the same cuDNN call but is cheap to recompute; a video of exactly `text_length` tokens would keep
    its cross attention too: more memory, the same gradients).
    """
    by_name = jax.checkpoint_policies.save_only_these_names(*BSA_RESIDUAL_NAMES)

    def cudnn_self_attention(prim, *avals, **params) -> bool:
        # avals: the primitive's inputs, query and key first, [B, S, H, D]
        return prim.name.startswith(CUDNN_ATTENTION_FORWARD) and avals[1].shape[1] != text_length

    return jax.checkpoint_policies.save_from_both_policies(by_name, cudnn_self_attention)


def _checkpointed(module: nnx.Module, base: type, arrays: tuple, *static, policy=None, **flags):
    """`base.__call__(module, *arrays, *static, **flags)` under `jax.checkpoint(policy=...)`: the module's state and
    `arrays` are the checkpoint's inputs, `static` and `flags` (a token grid, BSA flags) are closed over. A fresh
    module is merged from the checkpointed values, so nothing of the outer trace is mutated."""
    graphdef, state = nnx.split(module)

    def run(state, *arrays):
        return base.__call__(nnx.merge(graphdef, state), *arrays, *static, **flags)

    return jax.checkpoint(run, policy=policy)(state, *arrays)


class RematDiTBlock(DiTBlock):
    """A `DiTBlock` whose forward is recomputed in the backward pass instead of stored (all of it)."""

    def _policy(self, text: jax.Array):
        """The `jax.checkpoint` policy of this block's call (None: save nothing but the inputs)."""
        del text
        return None

    def __call__(self, x, text, text_mask, t_emb, grid, **flags):
        return _checkpointed(self, DiTBlock, (x, text, text_mask, t_emb), grid, policy=self._policy(text), **flags)


class RematKeepAttentionDiTBlock(RematDiTBlock):
    """A `RematDiTBlock` that keeps its self attention's output and statistics (`keep_self_attention_policy`)."""

    def _policy(self, text: jax.Array):
        return keep_self_attention_policy(text.shape[1])  # text: [B, L, C]


class RecomputedSelfAttention(SelfAttention):
    """A `SelfAttention` whose call runs under `jax.checkpoint` (nothing saved but its input): inside a remat'ed
    block's backward its residuals exist only while its own backward runs ("block_and_sublayers")."""

    def __call__(self, x, grid, **flags):
        return _checkpointed(self, SelfAttention, (x,), grid, **flags)


class RecomputedFeedForward(FeedForwardSwiGLU):
    """A `FeedForwardSwiGLU` whose call runs under `jax.checkpoint` (see `RecomputedSelfAttention`)."""

    def __call__(self, x, prequantized=None):
        return _checkpointed(self, FeedForwardSwiGLU, (x, prequantized))


# mode -> (block class, self attention class, FFN class)
_CLASSES = {
    "block_keep_attention": (RematKeepAttentionDiTBlock, SelfAttention, FeedForwardSwiGLU),
    "block": (RematDiTBlock, SelfAttention, FeedForwardSwiGLU),
    "block_and_sublayers": (RematDiTBlock, RecomputedSelfAttention, RecomputedFeedForward),
    "none": (DiTBlock, SelfAttention, FeedForwardSwiGLU),
}


def rematerialize_blocks(model: LongCatDiT, mode: str = "block") -> None:
    """Makes every block of `model` rematerialise as `mode` says (one of `REMAT_MODES`; in place, the next jit call
    retraces; "none" makes them plain `DiTBlock`s again)."""
    if mode not in REMAT_MODES:
        raise ConfigError(f"unknown remat mode {mode!r}; choose one of {list(REMAT_MODES)}")
    block_class, attention_class, ffn_class = _CLASSES[mode]
    for block in model.blocks:
        if isinstance(block, DiTBlock):
            block.__class__ = block_class
            block.attn.__class__ = attention_class
            block.ffn.__class__ = ffn_class
