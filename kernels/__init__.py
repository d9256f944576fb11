"""Block-sparse attention (BSA) for LongCat-Video: selection, layout, reference and Pallas kernels.

Imports nothing from `longcat_jax`; the DiT calls `bsa_attention` with a `BSAParams`, on any token grid (grids
that the chunks do not divide are padded to whole chunks inside, `GridPadding`). `KernelConfig` picks the kernels;
`KernelConfig(fp8=True)` runs the forward on e4m3 operands (Hopper, inference only; `fp8_operands`).
"""

from kernels.api import (
    BACKENDS,
    bsa_attention,
    bsa_selection,
    check_pallas_shapes,
    fp8_forward_available,
    resolve_backend,
    sparse_attention_chunked,
)
from kernels.errors import BSAConfigError, BSAInputError
from kernels.layout import (
    chunk_grid,
    chunk_order_permutation,
    from_chunk_order,
    inverse_permutation,
    padded_chunk_grid,
    to_chunk_order,
)
from kernels.mosaic_config import MosaicConfig
from kernels.padding import GridPadding
from kernels.pallas_mosaic_backward import MosaicBackwardConfig
from kernels.pallas_triton import TritonConfig
from kernels.params import BSAParams
from kernels.selection import block_mask_from_indices, indices_from_block_mask, select_blocks
from kernels.sparse_attention import RESIDUAL_NAMES as BSA_RESIDUAL_NAMES
from kernels.sparse_attention import KernelConfig

__all__ = [
    "BACKENDS",
    "BSAConfigError",
    "BSAInputError",
    "BSAParams",
    "BSA_RESIDUAL_NAMES",
    "block_mask_from_indices",
    "bsa_attention",
    "bsa_selection",
    "check_pallas_shapes",
    "chunk_grid",
    "chunk_order_permutation",
    "fp8_forward_available",
    "from_chunk_order",
    "GridPadding",
    "indices_from_block_mask",
    "inverse_permutation",
    "KernelConfig",
    "MosaicBackwardConfig",
    "MosaicConfig",
    "padded_chunk_grid",
    "resolve_backend",
    "select_blocks",
    "sparse_attention_chunked",
    "to_chunk_order",
    "TritonConfig",
]
