"""Shared test set-up: the fixture folder, the BSA fixture cases, the `gpu` marker and float32 matmuls on CPU."""

import json
import os
from pathlib import Path

# Eight CPU devices for the multi-device (context parallel) tests; must be set before JAX starts its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

_DEFAULT_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "longcat_ref"


def _has_gpu() -> bool:
    try:
        return any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (jax.devices() has none)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The reference fixture folder; LONGCAT_FIXTURES overrides the default `../shared/fixtures/longcat_ref`.

    Under CI=true a missing folder is an error, never a skip, so parity cannot silently stop being tested.
    """
    path = Path(os.environ.get("LONGCAT_FIXTURES", _DEFAULT_FIXTURES))
    if not path.is_dir():
        message = f"fixture folder {path} not found; set LONGCAT_FIXTURES to the longcat_ref folder"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def bsa_fixture_cases(fixtures_dir) -> list:
    """The original's `bsa_cases`: (name, BSAParams, latent_q, latent_k, arrays), q/k/v/out as [B, S, H, D].

    The fixtures store q, k, v, out as [B, H, S, D] bf16 in (T, H, W) raster order (out in float32) and the
    block mask [B, H, Mq, Mk].
    """
    import jax.numpy as jnp
    import numpy as np

    from convert.safetensors_io import SafetensorsCheckpoint
    from kernels import BSAParams

    specs = json.loads((fixtures_dir / "bsa_cases.json").read_text())
    tensors = SafetensorsCheckpoint(fixtures_dir / "bsa_cases.safetensors")
    cases = []
    for spec in specs:
        arrays = {
            name: jnp.asarray(np.array(tensors.read(f"{spec['name']}.{name}")))
            for name in ("q", "k", "v", "out", "block_mask")
        }
        for name in ("q", "k", "v", "out"):
            arrays[name] = arrays[name].transpose(0, 2, 1, 3)  # [B, H, S, D] -> [B, S, H, D]
        params = BSAParams.from_dict({key: spec[key] for key in (
            "sparsity", "cdf_threshold", "chunk_3d_shape_q", "chunk_3d_shape_k")})
        cases.append((spec["name"], params, tuple(spec["latent_shape_q"]), tuple(spec["latent_shape_k"]), arrays))
    return cases
