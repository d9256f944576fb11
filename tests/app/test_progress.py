"""The denoising loop's step reports (`longcat_jax.progress.on_steps`), which the app's progress and cancel listen
to: each step reaches the listeners of the thread that runs the loop, and no other thread's; a listener that
raises stops the loop there; the CLI's tqdm bar still runs to its total."""

from __future__ import annotations

import re
import threading

import jax.numpy as jnp
import pytest

from longcat_jax.pipelines.denoise import sample
from longcat_jax.pipelines.scheduler import make_schedule
from longcat_jax.progress import on_steps


class HalvingDenoiser:
    """A stand-in for `Denoiser` (sample calls only its `step`): each step halves the latents, and counts itself."""

    def __init__(self):
        self.steps = 0

    def step(self, latents, text, timestep, sigma, sigma_next, **_):
        self.steps += 1
        return latents * 0.5


def test_each_step_reaches_the_listener_and_the_bar_runs_to_its_total(capsys):
    heard = []
    with on_steps(lambda loop, step, total: heard.append((loop, step, total))):
        latents = sample(HalvingDenoiser(), jnp.ones((1, 2, 1, 2, 2)), make_schedule(3), None, desc="t2v denoising")
    assert heard == [("t2v denoising", 1, 3), ("t2v denoising", 2, 3), ("t2v denoising", 3, 3)]
    assert float(latents.max()) == 0.125
    bars = re.findall(r"t2v denoising: .*?(\d+)/(\d+) \[", capsys.readouterr().err)
    assert bars and bars[-1] == ("3", "3")


def test_a_loop_outside_the_block_or_on_another_thread_is_not_heard():
    heard = []
    with on_steps(lambda *report: heard.append(report)):
        other = threading.Thread(target=sample, args=(HalvingDenoiser(), jnp.ones((1, 1, 1, 1, 1)), make_schedule(2), None))
        other.start()
        other.join()
    sample(HalvingDenoiser(), jnp.ones((1, 1, 1, 1, 1)), make_schedule(2), None)
    assert heard == []


class Stop(Exception):
    pass


def test_a_listener_that_raises_stops_the_loop_at_that_step():
    denoiser = HalvingDenoiser()

    def stop_at_two(loop: str, step: int, total: int) -> None:
        if step == 2:
            raise Stop(loop)

    with on_steps(stop_at_two), pytest.raises(Stop):
        sample(denoiser, jnp.ones((1, 1, 1, 1, 1)), make_schedule(5), None)
    assert denoiser.steps == 2
