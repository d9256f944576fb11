"""Submitting a job to the app's engine and waiting for it, for the server-level app tests."""

from __future__ import annotations

import time

from longcat_jax.app.engine import Engine
from longcat_jax.app.jobs import Job, JobState


def run_job(engine: Engine, timeout: float, **fields) -> Job:
    """Submits a request of `fields` (the form's names) and waits until it finishes; it must succeed in `timeout` s."""
    job = engine.submit(engine.settings.request(**fields))
    deadline = time.monotonic() + timeout
    while not job.state.finished:
        assert time.monotonic() < deadline, job.state
        time.sleep(0.02)
    assert job.state is JobState.DONE, job.error
    return job
