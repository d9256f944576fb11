"""Parity group `t5`: our UMT5 encoder against the original `UMT5EncoderModel` on the fixture's tiny model.

Case `t5.last_hidden_state` = encoder(`t5.input_ids`, `t5.attention_mask`), compared only where the
mask is 1 (padded positions are meaningless in both). The weights come from the fixture's
`text_encoder/` folder, read by `load_text_encoder` like a real checkpoint; every size comes from
the files.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from longcat_jax.metrics import rel_l2
from longcat_jax.models.text_encoder.loading import load_text_encoder
from longcat_jax.models.text_encoder.umt5 import run_encoder
from longcat_jax.parity.report import CaseResult, verdict

TOLERANCES = {"float32": 1e-4, "bfloat16": 2e-2}
CASE = "t5.last_hidden_state"
INPUTS = ("t5.input_ids", "t5.attention_mask")


def run(fixtures: Path, dtype: str) -> list[CaseResult]:
    """One result for the case; a missing fixture file or tensor gives a FAIL naming it."""
    fixtures = Path(fixtures)
    if dtype not in TOLERANCES:
        return [CaseResult(CASE, float("nan"), float("nan"), "FAIL", note=f"unknown dtype {dtype!r}")]
    tol = TOLERANCES[dtype]
    tensors_file = fixtures / "pipeline_cases.safetensors"
    for needed in (fixtures / "text_encoder" / "config.json", tensors_file):
        if not needed.is_file():
            return [CaseResult(CASE, float("nan"), tol, "FAIL", note=f"{needed} not found")]
    expected = load_file(str(tensors_file))
    absent = [name for name in (CASE, *INPUTS) if name not in expected]
    if absent:
        return [CaseResult(CASE, float("nan"), tol, "FAIL", note=f"{absent} missing from {tensors_file}")]

    input_ids, mask = expected["t5.input_ids"], expected["t5.attention_mask"]
    with jax.default_matmul_precision("highest" if dtype == "float32" else "default"):
        encoder = load_text_encoder(fixtures / "text_encoder", dtype=jnp.dtype(dtype))
        got = run_encoder(encoder, jnp.asarray(input_ids, jnp.int32), jnp.asarray(mask, jnp.int32))
    got, want = np.asarray(got), expected[CASE]
    if got.shape != want.shape:
        return [CaseResult(CASE, float("nan"), tol, "FAIL", note=f"shape {got.shape} != expected {want.shape}")]
    keep = mask.astype(bool)  # [B, L]
    error = rel_l2(got[keep], want[keep])
    note = f"{int(keep.sum())} of {keep.size} positions compared (mask == 1)"
    return [CaseResult(CASE, error, tol, verdict(error, tol), note=note)]
