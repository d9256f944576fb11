"""The device mesh that context parallelism runs on, on one host or many.

One host: `make_mesh(n)` takes the first n of `jax.devices()` (default: all of them), no launcher needed.

Several hosts: start the same command once per host (any launcher, or by hand) with the coordinator's address,
and call `initialize_distributed()` before anything else touches JAX:

    # on every host; host 0 also runs the coordinator on port 1234
    LONGCAT_COORDINATOR=host0:1234 LONGCAT_NUM_PROCESSES=2 LONGCAT_PROCESS_ID=<0 or 1> \\
        python -m longcat_jax.generate ... --context-parallel 16

`initialize_distributed` calls `jax.distributed.initialize()` with those values (under SLURM or Open MPI JAX
finds them by itself and the variables may be left out); `jax.devices()` then lists every host's GPUs and the
mesh spans all of them. Every process runs the same program on the same inputs (same seed, same prompt): JAX's
collectives move the data between hosts; there is no hand-written communication.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from longcat_jax.errors import InputError

logger = logging.getLogger(__name__)

CONTEXT_AXIS = "context"
"""The mesh axis that tokens (and, inside self attention, heads) are split over."""


def make_mesh(context_parallel: int | None = None, *, devices=None) -> Mesh:
    """A one-axis mesh (`CONTEXT_AXIS`) of `context_parallel` devices: the first ones of `devices`
    (default `jax.devices()`, every device of every process); None takes them all.

    Refuses a count below 1 or above the devices present, and, with several processes, a mesh that leaves a
    process without a device (every process must take part in every step).
    """
    devices = list(jax.devices() if devices is None else devices)
    count = len(devices) if context_parallel is None else context_parallel
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise InputError(f"--context-parallel must be a positive number of devices, got {context_parallel!r}")
    if count > len(devices):
        kinds = sorted({d.platform for d in devices})
        raise InputError(
            f"--context-parallel {count} needs {count} devices, but only {len(devices)} ({', '.join(kinds)}) are "
            f"visible; use at most {len(devices)}, or on a CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={count} before starting Python"
        )
    chosen = devices[:count]
    processes = {d.process_index for d in devices}
    if len(processes) > 1 and {d.process_index for d in chosen} != processes:
        raise InputError(
            f"--context-parallel {count} leaves some of the {len(processes)} processes without a device; with "
            f"several hosts use all {len(devices)} devices (the default)"
        )
    return Mesh(np.array(chosen), (CONTEXT_AXIS,), axis_types=(AxisType.Auto,))


def initialize_distributed() -> None:
    """Joins this process to a multi-host run (`jax.distributed.initialize`); call it before any other JAX use.

    Reads LONGCAT_COORDINATOR (host:port of process 0), LONGCAT_NUM_PROCESSES and LONGCAT_PROCESS_ID when set;
    without them JAX detects SLURM / Open MPI / cloud TPU settings itself. Does nothing if already initialised.
    """
    if jax.distributed.is_initialized():
        return
    coordinator = os.environ.get("LONGCAT_COORDINATOR")
    kwargs = {}
    if coordinator:
        try:
            kwargs = dict(
                coordinator_address=coordinator,
                num_processes=int(os.environ["LONGCAT_NUM_PROCESSES"]),
                process_id=int(os.environ["LONGCAT_PROCESS_ID"]),
            )
        except (KeyError, ValueError) as err:
            raise InputError(
                "LONGCAT_COORDINATOR is set, so LONGCAT_NUM_PROCESSES and LONGCAT_PROCESS_ID must be integers too"
            ) from err
    jax.distributed.initialize(**kwargs)
    logger.info(
        "Process %d of %d: %d local and %d global devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )
