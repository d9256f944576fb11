"""What the device offers: its memory (the allocator's limit on a GPU, the host's memory on a CPU), whether it has
a pinned host memory to stream from, and the peak its allocator has seen."""

from __future__ import annotations

import dataclasses
import os

import jax

PINNED_HOST = "pinned_host"
DEVICE = "device"


@dataclasses.dataclass(frozen=True)
class DeviceMemory:
    """A device's memory as the plan sees it: `bytes` it may allocate, its `platform` ('gpu', 'cpu', ...), and
    `description`, how the figure was found (for the log)."""

    bytes: int
    platform: str
    description: str


def device_memory(device: jax.Device | None = None) -> DeviceMemory:
    """The memory JAX may allocate on `device` (default: the first local device): the allocator's `bytes_limit`
    (on a GPU that is XLA_PYTHON_CLIENT_MEM_FRACTION of it, 75% by default), or, for a device without allocator
    statistics (the CPU), the host memory available now."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return DeviceMemory(int(stats["bytes_limit"]), device.platform,
                            f"{device.device_kind} allocator limit (XLA_PYTHON_CLIENT_MEM_FRACTION sets it)")
    return DeviceMemory(host_available_bytes(), device.platform,
                        "the host memory available now: on the CPU the host is the device")


def host_available_bytes() -> int:
    """MemAvailable of /proc/meminfo where there is one, else the physical memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def has_memory_kind(device: jax.Device, kind: str) -> bool:
    """Whether `device` can hold arrays in memory of `kind` ('pinned_host', 'device', ...)."""
    try:
        return any(memory.kind == kind for memory in device.addressable_memories())
    except (AttributeError, NotImplementedError, jax.errors.JaxRuntimeError):
        return False


def peak_bytes(device: jax.Device | None = None) -> int | None:
    """The allocator's peak bytes in use since the process started; None where the device reports none (CPU)."""
    device = device or jax.local_devices()[0]
    return (device.memory_stats() or {}).get("peak_bytes_in_use")
