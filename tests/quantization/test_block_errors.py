"""`block_errors`: each block's local error of a candidate DiT against its reference, from one paired pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.loading import random_dit
from longcat_jax.models.dit.quantized_linear import quantize_linears
from longcat_jax.quantization.block_errors import block_errors
from tests.quantization.fixture_dit import read_cases, run_case, t2v_args


def _models(fixtures_dir):
    config = DiTConfig.from_json(Path(fixtures_dir) / "dit" / "config.json")
    return random_dit(config, seed=0), random_dit(config, seed=0)


def test_identical_models_have_no_error_and_the_output_is_the_models(fixtures_dir):
    cases = read_cases(fixtures_dir)
    reference, twin = _models(fixtures_dir)
    output, errors = block_errors(reference, twin, *t2v_args(cases))
    assert len(errors) == len(reference.blocks) >= 2
    # the two copies of a block are compiled in one program, where XLA may fuse (and so round) them differently
    assert all(e.output_rel < 1e-6 and e.update_rel < 1e-6 for e in errors), errors
    assert rel_l2(np.asarray(output), run_case(reference, cases, "t2v")) < 1e-5
    assert all(type(b).__name__ != "_PairedBlock" for b in reference.blocks)  # the reference is given back as it was


def test_the_error_is_local_to_the_block_that_differs(fixtures_dir):
    cases = read_cases(fixtures_dir)
    reference, candidate = _models(fixtures_dir)
    kernel = candidate.blocks[1].ffn.w2.kernel
    kernel.set_value(kernel.get_value() * 1.01)
    _, errors = block_errors(reference, candidate, *t2v_args(cases))
    assert errors[1].update_rel > 1e-3
    assert all(e.update_rel < 1e-6 for i, e in enumerate(errors) if i != 1), errors  # each sees the reference's input


def test_a_quantized_candidate_errs_in_every_block(fixtures_dir):
    cases = read_cases(fixtures_dir)
    reference, candidate = _models(fixtures_dir)
    _, errors = block_errors(reference, quantize_linears(candidate, "int8"), *t2v_args(cases))
    assert all(0.0 < e.update_rel < 0.2 and 0.0 < e.output_rel < 0.2 for e in errors), errors
