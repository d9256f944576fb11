"""The differentiable block-sparse kernel on chunk-ordered tokens: picks the forward kernel, shares one backward.

Forward: the Triton-lowered kernel (`pallas_triton`, any CUDA GPU) or, on request, the Mosaic GPU kernel for
Hopper (`pallas_mosaic`). Both return the output and the base-2 log-sum-exp, so the Triton backward
kernels (dq over the selection lists, dk/dv over the transposed lists) serve either through `jax.custom_vjp`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from kernels import pallas_mosaic, pallas_triton
from kernels.errors import BSAConfigError, BSAInputError

FORWARDS = ("triton", "mosaic")


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Which forward kernel runs and the launch settings of each.

    forward: "triton" (the default: on an H100 it measured faster than the Mosaic kernel, see BENCHMARKS.md) or
    "mosaic" (the Hopper kernel where it supports the shapes; refused where it cannot run).
    """

    forward: str = "triton"
    triton: pallas_triton.TritonConfig = pallas_triton.TritonConfig()
    mosaic: pallas_mosaic.MosaicConfig = pallas_mosaic.MosaicConfig()

    def __post_init__(self):
        if self.forward not in FORWARDS:
            raise BSAConfigError(f"unknown BSA forward kernel {self.forward!r}; choose one of {FORWARDS}")

    def interpreted(self) -> KernelConfig:
        """The same settings run through the Pallas interpreters on the CPU."""
        return dataclasses.replace(
            self,
            triton=dataclasses.replace(self.triton, interpret=True),
            mosaic=dataclasses.replace(self.mosaic, interpret=True),
        )

    def uses_mosaic(self, q: jax.Array, block_q: int, block_k: int) -> bool:
        """Whether the Mosaic GPU forward runs for these inputs; refuses "mosaic" where it cannot."""
        supported = pallas_mosaic.supports(q, block_q, block_k)
        if self.forward == "mosaic" and not supported:
            raise BSAInputError(
                f"the Mosaic GPU BSA forward needs {pallas_mosaic.BLOCK}-token q and k blocks (4x4x4 chunks), "
                f"head_dim 64 or 128 and bf16/f16 inputs; got blocks {block_q}/{block_k}, head_dim {q.shape[-1]}, "
                f"{q.dtype}; use forward='triton' or 'auto'"
            )
        return self.forward == "mosaic"


def sparse_attention_forward(q, k, v, indices, counts, block_q, block_k, config: KernelConfig):
    """(out [B, Sq, H, D] in q's dtype, lse [B, H, Sq] float32 base 2) from the kernel `config` picks."""
    if config.uses_mosaic(q, block_q, block_k):
        return pallas_mosaic.sparse_attention_forward(q, k, v, indices, counts, config.mosaic)
    return pallas_triton.sparse_attention_forward(q, k, v, indices, counts, block_q, block_k, config.triton)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def sparse_attention(q, k, v, indices, counts, block_q, block_k, config: KernelConfig):
    """Block-sparse attention of chunk-ordered q [B, Sq, H, D] over k, v [B, Sk, H, D] (differentiable).

    indices [B, H, Mq, K_max] int32 key blocks per query block (entries past counts ignored), counts
    [B, H, Mq] int32; block_q / block_k tokens per block. Scale 1/sqrt(D).
    """
    out, _ = sparse_attention_forward(q, k, v, indices, counts, block_q, block_k, config)
    return out


def _sparse_attention_fwd(q, k, v, indices, counts, block_q, block_k, config):
    out, lse = sparse_attention_forward(q, k, v, indices, counts, block_q, block_k, config)
    return out, (q, k, v, indices, counts, out, lse)


def _sparse_attention_bwd(block_q, block_k, config, residuals, do):
    q, k, v, indices, counts, out, lse = residuals
    dq, dk, dv = pallas_triton.sparse_attention_backward(
        q, k, v, indices, counts, out, lse, do, block_q, block_k, config.triton
    )
    return dq, dk, dv, None, None


sparse_attention.defvjp(_sparse_attention_fwd, _sparse_attention_bwd)
