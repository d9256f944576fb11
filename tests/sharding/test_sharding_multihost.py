"""Two processes of 4 CPU devices each, joined by `initialize_distributed` (as two hosts would be): the context
parallel DiT and the sampler over the 8-device mesh give every process the single-device result.

The test starts this file twice as a script (one per process, talking over localhost with gloo collectives);
each process checks its own result and prints OK.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.xla_flags import subprocess_xla_flags

PROCESSES = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo CPU collectives")
def test_two_processes_share_one_mesh():
    root = Path(__file__).resolve().parents[2]
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS=subprocess_xla_flags(4), JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(root), str(root / "tests")]), LONGCAT_COORDINATOR=f"localhost:{port}",
               LONGCAT_NUM_PROCESSES=str(PROCESSES))
    workers = [
        subprocess.Popen([sys.executable, __file__], env=dict(env, LONGCAT_PROCESS_ID=str(index)),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for index in range(PROCESSES)
    ]
    outputs = []
    for worker in workers:
        try:
            outputs.append(worker.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            pytest.fail("the two processes did not finish within 240 s")
    for index, (worker, output) in enumerate(zip(workers, outputs)):
        assert worker.returncode == 0 and f"process {index}: OK" in output, output[-3000:]


def _worker() -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_default_matmul_precision", "highest")
    from longcat_jax.sharding import initialize_distributed, make_mesh, shard_dit, to_host

    initialize_distributed()
    import numpy as np
    from test_sharding_dit import assert_close, inputs, run, tiny_config

    from longcat_jax.models.dit.loading import random_dit
    from longcat_jax.pipelines.denoise import Denoiser, TextCondition, sample
    from longcat_jax.pipelines.scheduler import make_schedule

    assert jax.process_count() == PROCESSES and jax.device_count() == 4 * PROCESSES
    # Every process builds the same weights on its own device, as every host loads the same checkpoint.
    single, sharded = (random_dit(tiny_config(), device=jax.local_devices()[0]) for _ in range(2))
    shard_dit(sharded, make_mesh())
    args = inputs(frames=8)
    got = run(sharded, args, num_cond_latents=2)
    assert not got.is_fully_addressable
    assert_close(to_host(got), run(single, args, num_cond_latents=2))

    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((2, 1, 12, 16)).astype(np.float32)
    mask = np.ones((2, 12), np.int32)
    text = TextCondition(embeddings[:1], mask[:1], embeddings[1:], mask[1:])
    latents = jax.random.normal(jax.random.key(1), (1, 16, 8, 4, 8))  # this process's copy, as pipe.noise makes
    results = [
        sample(Denoiser(dit), latents, make_schedule(2), text, guidance_scale=4.0, guided=True, num_cond_latents=2)
        for dit in (single, sharded)
    ]
    assert_close(to_host(results[1]), results[0])
    print(f"process {jax.process_index()}: OK", flush=True)


if __name__ == "__main__":
    _worker()
