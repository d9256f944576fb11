"""Parity group `bsa`: block-sparse attention against every `bsa_cases` fixture of the original.

Per case (`bsa_cases.json` lists them; q, k, v [B, H, S, D] bf16 in (T, H, W) raster order, the
original's output and block mask are in `bsa_cases.safetensors`):
- `<case>/selection`: our block selection vs the stored mask; rel_l2 holds the fraction of mask
  entries that differ (the task asks for at least 99% agreement).
- `<case>/given_mask`: attention given the stored mask, on the default backend (the Pallas kernel on a
  GPU, the jnp reference on the CPU), inputs in `--dtype`.
- `<case>/whole_call`: `bsa_attention` end to end (layout, our selection, attention) in `--dtype`.
Every shape and BSA parameter is read from the fixture files.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from kernels import (
    BSAParams,
    block_mask_from_indices,
    bsa_attention,
    from_chunk_order,
    indices_from_block_mask,
    resolve_backend,
    select_blocks,
    sparse_attention_chunked,
    to_chunk_order,
)
from longcat_jax.bsa_config import PARAM_KEYS
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.metrics import rel_l2
from longcat_jax.parity.report import CaseResult, verdict

SELECTION_TOLERANCE = 0.01  # fraction of block-mask entries allowed to differ
OUTPUT_TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}
WHOLE_CALL_TOLERANCE = 2e-2  # our own selection; a flipped near-tied block can cost more


FIXTURE_FILES = ("bsa_cases.json", "bsa_cases.safetensors")


def read_cases(fixtures: Path) -> list[tuple[str, BSAParams, tuple, tuple, dict[str, np.ndarray]]]:
    """Every `bsa_cases` fixture as (name, params, latent_q, latent_k, arrays): q, k, v, out [B, S, H, D] (our
    layout; stored [B, H, S, D] in raster order, out float32) and the original's block_mask [B, H, Mq, Mk]."""
    json_file, tensors_file = (Path(fixtures) / name for name in FIXTURE_FILES)
    tensors = SafetensorsCheckpoint(tensors_file)
    cases = []
    for spec in json.loads(json_file.read_text()):
        name = spec["name"]
        arrays = {key: np.array(tensors.read(f"{name}.{key}")) for key in ("q", "k", "v", "out", "block_mask")}
        for key in ("q", "k", "v", "out"):
            arrays[key] = arrays[key].transpose(0, 2, 1, 3)
        params = BSAParams.from_dict({key: spec[key] for key in PARAM_KEYS})
        cases.append((name, params, tuple(spec["latent_shape_q"]), tuple(spec["latent_shape_k"]), arrays))
    return cases


def run(fixtures: Path, dtype: str) -> list[CaseResult]:
    """Three results per fixture case; a missing fixture file gives a single FAIL naming it."""
    for needed in (Path(fixtures) / name for name in FIXTURE_FILES):
        if not needed.is_file():
            return [CaseResult("bsa", float("nan"), OUTPUT_TOLERANCE[dtype], "FAIL", note=f"{needed} not found")]
    compute_dtype = jnp.dtype(dtype)
    backend = resolve_backend("auto")
    results = []
    for name, params, latent_q, latent_k, arrays in read_cases(fixtures):
        q, k, v = (jnp.asarray(arrays[key]).astype(compute_dtype) for key in "qkv")
        want = arrays["out"]  # [B, Sq, H, D]
        q_c = to_chunk_order(q, latent_q, params.chunk_3d_shape_q)
        k_c = to_chunk_order(k, latent_k, params.chunk_3d_shape_k)
        v_c = to_chunk_order(v, latent_k, params.chunk_3d_shape_k)
        stored_mask = arrays["block_mask"].astype(bool)

        indices, counts = select_blocks(q_c, k_c, params, backend=backend)
        mask = np.asarray(block_mask_from_indices(indices, counts, stored_mask.shape[-1]))
        mismatch = float(np.mean(mask != stored_mask))
        results.append(CaseResult(
            f"{name}/selection", mismatch, SELECTION_TOLERANCE, verdict(mismatch, SELECTION_TOLERANCE),
            note=f"{mask.sum()} of {mask.size} blocks selected, {int(np.sum(mask != stored_mask))} differ",
        ))

        given_indices, given_counts = indices_from_block_mask(jnp.asarray(stored_mask))
        out_c = sparse_attention_chunked(
            q_c, k_c, v_c, given_indices, given_counts, params.chunk_size_q, params.chunk_size_k, backend=backend
        )
        error = rel_l2(from_chunk_order(out_c, latent_q, params.chunk_3d_shape_q).astype(jnp.float32), want)
        tol = OUTPUT_TOLERANCE[dtype]
        results.append(CaseResult(f"{name}/given_mask", error, tol, verdict(error, tol), note=f"backend {backend}"))

        out = bsa_attention(q, k, v, latent_q, latent_k, params)
        error = rel_l2(out.astype(jnp.float32), want)
        results.append(CaseResult(
            f"{name}/whole_call", error, WHOLE_CALL_TOLERANCE, verdict(error, WHOLE_CALL_TOLERANCE),
            note=f"backend {backend}",
        ))
    return results
