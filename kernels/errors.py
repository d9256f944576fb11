"""Errors of the block-sparse attention package.

`kernels/` imports nothing from `longcat_jax`, so it has its own error types; both derive from
`ValueError` so callers that catch bad values keep working, and the DiT can wrap them in its own.
"""


class BSAConfigError(ValueError):
    """BSA parameters out of range, unknown config keys, or chunk shapes that don't fit the latent grid."""


class BSAInputError(ValueError):
    """q, k, v arrays whose shapes, dtypes or head size the attention cannot take."""
