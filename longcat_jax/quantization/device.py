"""Whether the devices can run a quantization mode: FP8 compute needs FP8 tensor cores (compute capability 8.9+).

Checked before anything is loaded, so an unsupported choice fails in a second with the fix named instead of
compiling and then failing (or silently running FP8 emulation) deep inside XLA.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import jax

from longcat_jax.errors import ConfigError
from longcat_jax.quantization.attention import MIN_ATTENTION_CAPABILITY
from longcat_jax.quantization.modes import (
    FP8,
    FP8_ATTENTION_PRECISION,
    FP8_COMPUTE,
    FP8_WEIGHT_ONLY,
    INT8_MODE,
    QuantScheme,
    scheme_for,
)

logger = logging.getLogger(__name__)

FP8_MIN_COMPUTE_CAPABILITY = (8, 9)  # Ada (8.9), Hopper (9.0), Blackwell (10.x, 12.x)


def compute_capability(device: jax.Device) -> tuple[int, int] | None:
    """(major, minor) of an NVIDIA GPU, None for other devices or when the runtime does not say."""
    value = getattr(device, "compute_capability", None)
    if value is None:
        return None
    try:
        major, minor = str(value).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def fp8_compute_supported(device: jax.Device) -> bool:
    """True where FP8 GEMMs run: an NVIDIA GPU of compute capability 8.9+, or the CPU (emulated, for tests)."""
    if device.platform == "cpu":
        return True
    capability = compute_capability(device)
    return device.platform == "gpu" and capability is not None and capability >= FP8_MIN_COMPUTE_CAPABILITY


def _what_it_has(device) -> str:
    capability = compute_capability(device)
    return f"compute capability {capability[0]}.{capability[1]}" if capability else f"platform {device.platform}"


def check_quantize_supported(mode: str | QuantScheme | None, devices: Sequence[jax.Device] | None = None) -> None:
    """Raises ConfigError, naming the fix, if `mode` needs FP8 compute (or FP8 attention) that a device in `devices`
    lacks.

    devices: default this process's local devices. Weight-only modes ('int8', 'fp8-weight-only') run anywhere.
    """
    scheme = scheme_for(mode)
    if scheme is None or scheme.compute != FP8_COMPUTE:
        return
    devices = list(devices) if devices is not None else jax.local_devices()
    for device in devices:
        if not fp8_compute_supported(device):
            raise ConfigError(
                f"--quantize {scheme.mode} runs FP8 matrix multiplies, which need an NVIDIA GPU of compute capability "
                f"{FP8_MIN_COMPUTE_CAPABILITY[0]}.{FP8_MIN_COMPUTE_CAPABILITY[1]} or newer (Ada, Hopper); "
                f"{device.device_kind} has {_what_it_has(device)}. Use --quantize {INT8_MODE} (INT8 weight-only, any "
                f"GPU, the same memory), or --quantize {FP8_WEIGHT_ONLY} to keep an FP8 checkpoint's weights without "
                "FP8 math"
            )
        capability = compute_capability(device)
        if scheme.attention == FP8_ATTENTION_PRECISION and device.platform != "cpu" and (
                capability is None or capability < MIN_ATTENTION_CAPABILITY):
            raise ConfigError(
                f"--quantize {scheme.mode} runs cuDNN's FP8 attention, which needs compute capability "
                f"{MIN_ATTENTION_CAPABILITY[0]}.{MIN_ATTENTION_CAPABILITY[1]} or newer (Hopper, Blackwell); "
                f"{device.device_kind} has {_what_it_has(device)}. Use --quantize {FP8} (FP8 GEMMs, bf16 attention)"
            )
    if any(d.platform == "cpu" for d in devices):
        logger.info("FP8 compute on the CPU is emulated by XLA: correct, but no faster than float32")
