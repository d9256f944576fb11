"""One compile per thread program in JAX's Mosaic GPU interpreter, for the kernel tests on the CPU.

The interpreter runs each grid step's threads (warpgroups) as separate JAX programs, and JAX 0.10's
`thread_map._run_jaxpr` traces, lowers and compiles the thread's program again at every grid step: on a 2-core CPU
most of a Mosaic interpreter test's time (about 60%) went into XLA compiling the same program over and over.
`thread_programs_compiled_once` keeps the compiled program of each (program, argument types) for the duration of a
`with` block and runs it again; the program, its arguments and so its results are the same. Where the JAX in use
has no `thread_map._run_jaxpr` (another version), it changes nothing and the tests run as slowly as before.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import jax
import numpy as np


def _signature(tree) -> tuple:
    """The tree structure and each leaf's shape and dtype: what a compiled program is specialised on."""
    leaves, structure = jax.tree.flatten(tree)
    return structure, tuple((np.shape(leaf), str(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype))
                            for leaf in leaves)


@contextlib.contextmanager
def thread_programs_compiled_once() -> Iterator[None]:
    """Within the block, the Mosaic GPU interpreter compiles each thread program once per argument signature."""
    try:
        from jax._src.pallas.mosaic.interpret import thread_map
    except ImportError:
        yield
        return
    original = getattr(thread_map, "_run_jaxpr", None)
    if original is None:
        yield
        return
    from jax import core as jax_core

    compiled: dict[tuple, tuple] = {}  # key -> (the jaxpr, kept alive so that its id stays its own; the program)
    lock = threading.Lock()  # the threads of one grid step reach the first compile together

    def run(jaxpr, consts, *args):
        jax_core.eval_jaxpr(jaxpr, consts, *args)

    def run_jaxpr(jaxpr, consts, *args):
        key = (id(jaxpr), _signature(consts), _signature(args))
        with lock:
            if key not in compiled:
                program = jax.jit(run, static_argnums=(0,)).trace(jaxpr, consts, *args).lower().compile()
                compiled[key] = (jaxpr, program)
        compiled[key][1](consts, *args)

    thread_map._run_jaxpr = run_jaxpr
    try:
        yield
    finally:
        thread_map._run_jaxpr = original
