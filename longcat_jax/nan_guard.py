"""The NaN guard: one reduction after each stage of a run checks its array for NaN or Inf, so a numerical failure
stops the run with the stage's name and the likely causes instead of writing a black video with exit status 0
(a NaN latent decodes to NaN pixels, and NaN cast to uint8 is 0 on the usual platforms).

    check_finite(latents, "t2v denoising")          # raises NonFiniteError naming the stage

The check is one fused `isfinite(x).all()` on the array's device(s), so it costs a read of the array and a
device-to-host transfer of one boolean: nothing next to a denoising stage.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from longcat_jax.errors import LongCatError

LIKELY_CAUSES = (
    "NaN or Inf weights in the checkpoint (a damaged download or conversion: download or convert it again), an "
    "extreme --lora multiplier, or overflow in low precision (float16 weights, --quantize fp8: try --dtype float32 "
    "or --quantize none)"
)


class NonFiniteError(LongCatError):
    """A stage of a run produced NaN or Inf values; nothing after it ran and no output was written."""


@jax.jit
def _all_finite(x: jax.Array) -> jax.Array:
    return jnp.isfinite(x).all()  # one fused reduction, no boolean copy of x


def check_finite(x: jax.Array | np.ndarray, stage: str, causes: str = LIKELY_CAUSES) -> None:
    """Raises `NonFiniteError` when `x` holds a NaN or Inf; `stage` names what made `x` (e.g. 't2v denoising')."""
    finite = np.isfinite(x).all() if isinstance(x, np.ndarray) else _all_finite(x)
    if not bool(finite):
        raise NonFiniteError(
            f"{stage} produced NaN or Inf values, so the video would be black; the run stops here and writes "
            f"nothing. Likely causes: {causes}"
        )
