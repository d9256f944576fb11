"""Error measures shared by the parity tool, the tests, the benchmarks and the video comparison tool.

`rel_l2` compares arrays. `psnr` and `ssim` compare uint8 RGB frames [H, W, 3] as image-quality tools do:

- PSNR = 10 log10(255^2 / MSE) over every value of the frame, in dB (inf for identical frames).
- SSIM is Wang et al. (2004): local means, variances and covariance under an 11x11 Gaussian window of
  sigma 1.5 (weights normalised to sum 1, so variances and covariance are the population ones, as Wang et
  al. define them), C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, averaged over the window positions that lie
  fully inside the frame, then over the three channels. scikit-image's `structural_similarity` computes the
  same (to float32 rounding) only with `gaussian_weights=True, use_sample_covariance=False, channel_axis=-1,
  data_range=255`: its default `use_sample_covariance=True` scales variances and covariance by 121/120 (which
  moved SSIM by 2.6e-4 on a test frame with noise of sigma 12), and without `gaussian_weights` it uses a
  uniform 7x7 window.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

PIXEL_MAX = 255.0
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # 11 taps: scikit-image's truncate=3.5 at sigma 1.5
SSIM_MIN_SIDE = 2 * SSIM_RADIUS + 1  # pixels a frame needs on each side: one window
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def rel_l2(got, want) -> float:
    """||got - want|| / ||want|| in float64 (nan when the shapes differ)."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("nan")
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def mse(a, b) -> float:
    """Mean squared difference of two equally shaped arrays (uint8 frames: in 0..255 units), float64."""
    return float(np.mean(np.square(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def psnr_from_mse(value: float, pixel_max: float = PIXEL_MAX) -> float:
    """PSNR in dB of a mean squared error; inf for 0."""
    return math.inf if value == 0 else 10.0 * math.log10(pixel_max**2 / value)


def psnr(a, b, pixel_max: float = PIXEL_MAX) -> float:
    """PSNR in dB between two equally shaped frames (or videos), over every value."""
    return psnr_from_mse(mse(a, b), pixel_max)


def _gaussian_taps() -> np.ndarray:
    offsets = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    return taps / taps.sum()


def _filter_valid(x: jax.Array, taps: jax.Array) -> jax.Array:
    """Separable Gaussian filter of x [H, W, C] keeping only windows fully inside: [H - 2r, W - 2r, C]."""
    size = taps.shape[0]
    h, w = x.shape[0] - size + 1, x.shape[1] - size + 1
    rows = sum(taps[i] * x[i:i + h] for i in range(size))
    return sum(taps[i] * rows[:, i:i + w] for i in range(size))


@jax.jit
def _ssim_jit(a: jax.Array, b: jax.Array) -> jax.Array:
    taps = jnp.asarray(_gaussian_taps(), jnp.float32)
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    var_a = _filter_valid(a * a, taps) - mu_a * mu_a
    var_b = _filter_valid(b * b, taps) - mu_b * mu_b
    cov = _filter_valid(a * b, taps) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * PIXEL_MAX) ** 2, (SSIM_K2 * PIXEL_MAX) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
    return jnp.mean(index, axis=(0, 1))  # per channel [C]


@functools.cache
def _ssim_device():
    return jax.devices("cpu")[0]


def ssim(a, b) -> float:
    """SSIM of two uint8 frames [H, W] or [H, W, C] (channels averaged); 1.0 for identical frames.

    Frames need at least 11 pixels on each side (one Gaussian window). Runs on the CPU in float32.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"SSIM needs frames of one shape, got {a.shape} and {b.shape}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if a.ndim != 3 or min(a.shape[:2]) < SSIM_MIN_SIDE:
        raise ValueError(f"SSIM needs frames [H, W(, C)] of at least {SSIM_MIN_SIDE} pixels a side, got {a.shape}")
    if np.array_equal(a, b):
        return 1.0  # exactly, where float32 rounding in the windows would give 1 - 1e-7
    with jax.default_device(_ssim_device()):
        return float(jnp.mean(_ssim_jit(jnp.asarray(a), jnp.asarray(b))))
