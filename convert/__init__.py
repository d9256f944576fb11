"""The conversion tool: `python -m convert SRC DST` over `longcat_jax.checkpoint` and the models' name maps.

Nothing in `longcat_jax` or `kernels` imports this package."""
