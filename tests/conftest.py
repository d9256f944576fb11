"""Shared test set-up: one compilation cache for the session, the fixture folder, the BSA fixture cases, the `gpu`
marker and float32 matmuls on CPU."""

import atexit
import logging
import os
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

# Eight CPU devices for the multi-device (context parallel) tests; must be set before JAX starts its backends. On a
# machine without an NVIDIA driver, XLA also compiles without LLVM's optimisations and with XLA:CPU's older fusion
# code generator: the tests' programs are small and compiled far more often than run. Without the optimisations two
# end-to-end CLI tests took 30.4 s instead of 44.8 s; with the older fusion emitters XLA's compiling took 33.0 s
# instead of 65.0 s in the Triton and Mosaic interpreter classes of tests/kernels/test_bsa_backends.py (123 s
# instead of 153 s in all) and 15.9 s instead of 26.7-28.8 s in tests/pipelines/test_pipelines.py (2-core CPU,
# one process, 2026-12-04).
_JAXLIB_VERSION = version("jaxlib")
# XLA aborts on a flag it does not know: the emitters' flag only where it was checked to exist (jaxlib 0.10).
_OLDER_FUSION_EMITTERS = " --xla_cpu_use_fusion_emitters=false" if _JAXLIB_VERSION.startswith("0.10.") else ""
_CPU_ONLY_FLAGS = "" if shutil.which("nvidia-smi") else " --xla_backend_optimization_level=0" + _OLDER_FUSION_EMITTERS
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8" + _CPU_ONLY_FLAGS)


def _share_one_compilation_cache() -> None:
    """Points the persistent compilation cache of this session at one fresh temporary folder, never the user's home:
    JAX's (`JAX_COMPILATION_CACHE_DIR`, read when jax is imported) and the CLI's (`LONGCAT_COMPILATION_CACHE`).

    The folder is made by the first process that imports this file, the xdist controller, whose environment its
    workers and the tests' subprocesses inherit: a program compiled in one of them is read back by the others
    instead of being compiled again. A cached program is the compiled one, so results do not depend on which test
    compiled first. The creating process removes the folder when it exits. A LONGCAT_COMPILATION_CACHE set by the
    caller (a folder, or `none` to compile everything afresh) is left alone.
    """
    if "LONGCAT_COMPILATION_CACHE" in os.environ:
        return
    folder = tempfile.mkdtemp(prefix="longcat_jax_test_compilation_cache_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["LONGCAT_COMPILATION_CACHE"] = folder
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", folder)


_share_one_compilation_cache()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from longcat_jax.cli_logging import QUIET_LIBRARIES  # noqa: E402
from longcat_jax.parity.fixtures import MISSING_FIXTURES_HINT, resolve_fixtures_dir  # noqa: E402

SHIPPED_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "longcat_ref"


def _has_gpu() -> bool:
    try:
        return any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        return False


@pytest.hookimpl(optionalhook=True, wrapper=True)
def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject.toml's addopts): one xdist worker more than xdist's count of CPU cores, unless
    PYTEST_XDIST_AUTO_NUM_WORKERS sets the number.

    A worker runs one Python thread for most of a test (tracing, XLA's compiles, waits on a subprocess, a server or a
    browser), so one worker per core can leave a core idle. Measured on a 2-core machine (tests/pipelines,
    tests/memory and tests/sharding/test_sharding_pipeline.py, 2026-12-04): 168 s with 2 workers against 146 s with 3
    in one pair of runs; with the older fusion emitters (above) 127 and 106 s with 2 against 116 and 119 s with 3,
    no difference beyond the spread. The suite's times in the README were measured with 3.
    """
    count = yield
    return count if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") else count + 1


def pytest_collection_modifyitems(config, items):
    # The `slow` tests first (a stable sort: each group keeps its order): started last, one of them keeps a worker
    # busy while the others have nothing left to run.
    items.sort(key=lambda item: "slow" not in item.keywords)
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (jax.devices() has none)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The reference fixture folder: LONGCAT_FIXTURES, else the set shipped in `tests/fixtures/longcat_ref`.

    Under CI=true a missing folder is an error, never a skip, so parity cannot silently stop being tested.
    """
    path = resolve_fixtures_dir(default=SHIPPED_FIXTURES).resolve()
    if not path.is_dir():
        message = f"fixture folder {path} not found; {MISSING_FIXTURES_HINT}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def bsa_fixture_cases(fixtures_dir) -> list:
    """The original's `bsa_cases` (see `longcat_jax.parity.bsa.read_cases`), arrays as jax arrays."""
    import jax.numpy as jnp

    from longcat_jax.parity.bsa import read_cases

    return [(*case[:4], {key: jnp.asarray(x) for key, x in case[4].items()}) for case in read_cases(fixtures_dir)]


@pytest.fixture(autouse=True)
def _restore_logging():
    """The CLIs' main() set the root logger to INFO, format its console handlers and quiet some libraries
    (`longcat_jax.cli_logging`); undo that for later tests."""
    root = logging.getLogger()
    level, formatters = root.level, [(h, h.formatter) for h in root.handlers]
    quieted = {name: logging.getLogger(name).level for name in QUIET_LIBRARIES}
    yield
    root.setLevel(level)
    for handler, formatter in formatters:
        handler.setFormatter(formatter)
    for name, library_level in quieted.items():
        logging.getLogger(name).setLevel(library_level)

