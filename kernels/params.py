"""BSA parameters: the `bsa_params` block of the LongCat DiT config, validated up front.

The keys and defaults are those of the original JSON configs (`sparsity` 0.9375, no CDF threshold,
4x4x4 chunks for q and k), so a user's config reads the same here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from kernels.errors import BSAConfigError

ChunkShape = tuple[int, int, int]


def _chunk_shape(name: str, value: Any) -> ChunkShape:
    """A (t, h, w) chunk shape of three positive ints, from a list or tuple."""
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise BSAConfigError(f"{name} must be three positive ints (t, h, w), got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


@dataclasses.dataclass(frozen=True)
class BSAParams:
    """How block-sparse attention selects key blocks for each query block.

    sparsity: fraction of key blocks dropped by top-k, in [0, 1); top-k keeps
        int((1 - sparsity) * num_k_blocks) blocks. None: no top-k rule.
    cdf_threshold: keep the best blocks while the cumulative softmax of block scores stays at or
        below it, in (0, 1]. None: no CDF rule. With both rules the larger count wins.
    chunk_3d_shape_q / chunk_3d_shape_k: (t, h, w) size of the 3D token chunks that form one
        query / key block; they must divide the latent grid.
    """

    sparsity: float | None = 0.9375
    cdf_threshold: float | None = None
    chunk_3d_shape_q: ChunkShape = (4, 4, 4)
    chunk_3d_shape_k: ChunkShape = (4, 4, 4)

    def __post_init__(self):
        if self.sparsity is None and self.cdf_threshold is None:
            raise BSAConfigError(
                "BSA needs a selection rule: set sparsity (e.g. 0.9375) or cdf_threshold (e.g. 0.98)"
            )
        if self.sparsity is not None:
            if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
                raise BSAConfigError(f"sparsity must be a number in [0, 1) or null, got {self.sparsity!r}")
            if not (0.0 <= self.sparsity < 1.0) or math.isnan(self.sparsity):
                raise BSAConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")
            object.__setattr__(self, "sparsity", float(self.sparsity))
        if self.cdf_threshold is not None:
            if isinstance(self.cdf_threshold, bool) or not isinstance(self.cdf_threshold, (int, float)):
                raise BSAConfigError(
                    f"cdf_threshold must be a number in (0, 1] or null, got {self.cdf_threshold!r}"
                )
            if not (0.0 < self.cdf_threshold <= 1.0):
                raise BSAConfigError(f"cdf_threshold must be in (0, 1], got {self.cdf_threshold}")
            object.__setattr__(self, "cdf_threshold", float(self.cdf_threshold))
        object.__setattr__(self, "chunk_3d_shape_q", _chunk_shape("chunk_3d_shape_q", self.chunk_3d_shape_q))
        object.__setattr__(self, "chunk_3d_shape_k", _chunk_shape("chunk_3d_shape_k", self.chunk_3d_shape_k))

    @property
    def chunk_size_q(self) -> int:
        """Tokens in one query block."""
        return math.prod(self.chunk_3d_shape_q)

    @property
    def chunk_size_k(self) -> int:
        """Tokens in one key block."""
        return math.prod(self.chunk_3d_shape_k)

    def num_topk(self, num_k_blocks: int) -> int:
        """Blocks the top-k rule keeps out of `num_k_blocks` (0 without a sparsity)."""
        if self.sparsity is None:
            return 0
        return int((1.0 - self.sparsity) * num_k_blocks)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> BSAParams:
        """Parse the `bsa_params` dict of a DiT config; unknown keys are refused by name."""
        if not isinstance(config, Mapping):
            raise BSAConfigError(f"bsa_params must be a mapping, got {type(config).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise BSAConfigError(
                f"unknown bsa_params key(s) {unknown}; the known keys are {sorted(known)}"
            )
        return cls(**dict(config))
