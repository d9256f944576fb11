"""Parity group `vae`: our Wan VAE against the original `AutoencoderKLWan` on the fixture's tiny model.

Cases (all sizes come from the files): `vae.latent_mean` and `vae.latent_logvar` = encode(`vae.video`)
(the posterior's mean and clamped logvar), and `vae.decoded` = decode(`vae.latent_mean`), clamped to
[-1, 1]. The weights come from the fixture's `vae/` folder, read by `load_vae` like a real checkpoint.
The reference ran untiled, so tiling is off here.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from longcat_jax.metrics import rel_l2
from longcat_jax.models.vae import load_vae
from longcat_jax.parity.report import CaseResult, verdict

TOLERANCES = {"float32": 1e-4, "bfloat16": 2e-2}
CASES = ("vae.latent_mean", "vae.latent_logvar", "vae.decoded")


def run(fixtures: Path, dtype: str) -> list[CaseResult]:
    """One result per case; missing fixture files or tensors give FAIL results naming them."""
    fixtures = Path(fixtures)
    if dtype not in TOLERANCES:
        return [CaseResult("vae", float("nan"), float("nan"), "FAIL", note=f"unknown dtype {dtype!r}")]
    tol = TOLERANCES[dtype]
    tensors_file = fixtures / "pipeline_cases.safetensors"
    for needed in (fixtures / "vae" / "config.json", tensors_file):
        if not needed.is_file():
            return [CaseResult(name, float("nan"), tol, "FAIL", note=f"{needed} not found") for name in CASES]
    expected = load_file(str(tensors_file))
    absent = [name for name in (*CASES, "vae.video") if name not in expected]
    if absent:
        return [CaseResult(name, float("nan"), tol, "FAIL", note=f"{absent} missing from {tensors_file}") for name in CASES]

    with jax.default_matmul_precision("highest" if dtype == "float32" else "default"):
        model = load_vae(fixtures / "vae", dtype=jnp.dtype(dtype))
        posterior = model.encode(jnp.asarray(expected["vae.video"]), tiling=False)
        decoded = model.decode(jnp.asarray(expected["vae.latent_mean"]), tiling=False)
    got = {"vae.latent_mean": posterior.mean, "vae.latent_logvar": posterior.logvar, "vae.decoded": decoded}
    return [_compare(name, np.asarray(got[name]), expected[name], tol) for name in CASES]


def _compare(name: str, got: np.ndarray, want: np.ndarray, tol: float) -> CaseResult:
    if got.shape != want.shape:
        return CaseResult(name, float("nan"), tol, "FAIL", note=f"shape {got.shape} != expected {want.shape}")
    error = rel_l2(got, want)
    return CaseResult(name, error, tol, verdict(error, tol))
