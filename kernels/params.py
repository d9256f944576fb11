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
_COUNT_TOLERANCE = 1e-6  # (1 - sparsity) * num_k_blocks within this below a whole number counts as that number


def _chunk_shape_problem(name: str, value: Any) -> str | None:
    """Why `value` is not a (t, h, w) chunk shape of three positive ints (a list or tuple), or None if it is one."""
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return f"{name} must be three positive ints (t, h, w), got {value!r}"
    return None


def _fraction_problem(name: str, value: Any, interval: str, inside) -> str | None:
    """Why `value` is not null or a number in `interval` (tested by `inside`), or None if it is fine."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number in {interval} or null, got {value!r}"
    if math.isnan(value) or not inside(value):
        return f"{name} must be in {interval}, got {value}"
    return None


@dataclasses.dataclass(frozen=True)
class BSAParams:
    """How block-sparse attention selects key blocks for each query block.

    sparsity: fraction of key blocks dropped by top-k, in [0, 1); top-k keeps
        (1 - sparsity) * num_k_blocks blocks, rounded down, and at least one. None: no top-k rule.
    cdf_threshold: keep the best blocks while the cumulative softmax of block scores stays at or
        below it, in (0, 1], and at least the best one; 1 keeps every block. None: no CDF rule. With both
        rules the larger count wins.
    chunk_3d_shape_q / chunk_3d_shape_k: (t, h, w) size of the 3D token chunks that form one
        query / key block; a grid they do not divide is padded to whole chunks (edge blocks hold fewer
        real tokens, see `padding`).
    """

    sparsity: float | None = 0.9375
    cdf_threshold: float | None = None
    chunk_3d_shape_q: ChunkShape = (4, 4, 4)
    chunk_3d_shape_k: ChunkShape = (4, 4, 4)

    def __post_init__(self):
        # Every bad value is named in one error, so a config with several mistakes is fixed in one pass.
        problems = [
            _fraction_problem("sparsity", self.sparsity, "[0, 1)", lambda x: 0.0 <= x < 1.0),
            _fraction_problem("cdf_threshold", self.cdf_threshold, "(0, 1]", lambda x: 0.0 < x <= 1.0),
            _chunk_shape_problem("chunk_3d_shape_q", self.chunk_3d_shape_q),
            _chunk_shape_problem("chunk_3d_shape_k", self.chunk_3d_shape_k),
        ]
        if self.sparsity is None and self.cdf_threshold is None:
            problems.append("BSA needs a selection rule: set sparsity (e.g. 0.9375) or cdf_threshold (e.g. 0.98)")
        problems = [problem for problem in problems if problem is not None]
        if problems:
            raise BSAConfigError("; ".join(problems))
        for name in ("sparsity", "cdf_threshold"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("chunk_3d_shape_q", "chunk_3d_shape_k"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))

    @property
    def chunk_size_q(self) -> int:
        """Tokens in one query block."""
        return math.prod(self.chunk_3d_shape_q)

    @property
    def chunk_size_k(self) -> int:
        """Tokens in one key block."""
        return math.prod(self.chunk_3d_shape_k)

    def num_topk(self, num_k_blocks: int) -> int:
        """Blocks the top-k rule keeps out of `num_k_blocks` (0 without a sparsity): (1 - sparsity) of them rounded
        down as the original does, but with a tolerance for the float product (the original's int() keeps 0 of
        10 blocks at 0.9, from 0.9999999999999998) and at least one, since a query block that attends to nothing
        outputs 0 (the original's top-k keeps none at 0.9375 of fewer than 16 blocks: a small grid's attention
        output was then all zeros). The released sparsities (powers of two) keep the original's counts wherever
        those are not 0."""
        if self.sparsity is None or num_k_blocks == 0:
            return 0
        return max(1, math.floor((1.0 - self.sparsity) * num_k_blocks + _COUNT_TOLERANCE))

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> BSAParams:
        """Parse the `bsa_params` dict of a DiT config (missing keys take the defaults above); unknown keys
        and bad values are all refused by name in one error."""
        if not isinstance(config, Mapping):
            raise BSAConfigError(f"bsa_params must be a mapping, got {type(config).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        problems = [f"unknown bsa_params key(s) {unknown}; the known keys are {sorted(known)}"] if unknown else []
        try:
            params = cls(**{key: value for key, value in config.items() if key in known})
        except BSAConfigError as err:
            problems.append(str(err))
        if problems:
            raise BSAConfigError("; ".join(problems))
        return params
