"""The calibration recorder behind `generate --record-calibration`: what it keeps of each denoising step."""

import jax.numpy as jnp
import numpy as np

from longcat_jax.models.dit.calibration_inputs import CalibrationInputs
from longcat_jax.pipelines.calibration_record import record_dit_call, recording_dit_calls


def _text(seed: int):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((2, 1, 4, 8)), jnp.float32), jnp.ones((2, 4), jnp.int32)  # [B', 1, L, C]


def test_steps_of_one_prompt_share_one_host_copy_of_its_text(tmp_path):
    latents = jnp.zeros((1, 16, 2, 4, 4), jnp.float32)  # [B, C, T, H, W]
    first, second = _text(0), _text(1)
    path = tmp_path / "calls.npz"
    with recording_dit_calls(path) as recorder:
        for step, (text, mask) in enumerate([first, first, first, second]):
            record_dit_call(latents + step, text, mask, 1.0 - step / 4, guided=True, conditioned=False)
        held = [call[2] for call in recorder.calls]  # each call's text [1, L, C]
    assert len(held) == 8
    assert all(np.shares_memory(held[0], held[i]) for i in (2, 4))  # the steps fed the same arrays
    assert not np.shares_memory(held[0], held[6])  # another prompt's text: its own copy
    calls = CalibrationInputs.load(path)
    assert calls.calls == 8
    np.testing.assert_array_equal(calls.text[4], np.asarray(first[0])[0])  # step 2's negative-prompt branch
    np.testing.assert_array_equal(calls.text[7], np.asarray(second[0])[1])  # step 3's prompt branch
