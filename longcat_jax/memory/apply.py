"""A memory plan applied to a pipeline's models: where each loads, how the DiT runs, the VAE's tiles, and the lines
the run's summary repeats (budget, placements, bytes streamed per step, peak device memory by stage)."""

from __future__ import annotations

import jax
from jax.sharding import SingleDeviceSharding

from longcat_jax.memory.device import PINNED_HOST
from longcat_jax.memory.peaks import PeakLog
from longcat_jax.memory.plan import TILE_OVERLAP, MemoryPlan
from longcat_jax.memory.sizes import format_size
from longcat_jax.memory.streaming import StreamedDiT
from longcat_jax.models.dit.transformer import LongCatDiT
from longcat_jax.models.vae.tiling import TilingConfig


def text_encoder_device(plan: MemoryPlan | None) -> jax.Device | None:
    """Where the text encoder loads: the CPU when the plan says so, else the default device (None)."""
    return jax.devices("cpu")[0] if plan is not None and plan.placement.text_on_cpu else None


def dit_sharding(plan: MemoryPlan | None) -> SingleDeviceSharding | None:
    """Where the DiT's weights load: pinned host memory when they stream, else the default device (None)."""
    if plan is None or not plan.placement.dit_streamed:
        return None
    return SingleDeviceSharding(jax.local_devices()[0], memory_kind=PINNED_HOST)


def vae_tiling(plan: MemoryPlan | None) -> TilingConfig | None:
    """The VAE's tiles when the plan picks a tile size; None: the VAE's own setting (whole frames up to 720p)."""
    if plan is None or plan.placement.vae_tile is None:
        return None
    return TilingConfig.square(plan.placement.vae_tile, TILE_OVERLAP)


def configure_dit(dit: LongCatDiT, plan: MemoryPlan | None) -> None:
    """The plan's token chunks on the DiT's blocks."""
    if plan is not None:
        dit.set_token_chunking(plan.placement.chunk_tokens)


def streamed_dit(dit: LongCatDiT, plan: MemoryPlan | None) -> StreamedDiT | None:
    """A `StreamedDiT` of `dit` when the plan streams its weights (make one per DiT setting: LoRAs, BSA)."""
    if plan is None or not plan.placement.dit_streamed:
        return None
    return StreamedDiT(dit)


class MemoryNotes:
    """The run summary's memory lines (a `RunStats` note: printed with str()): the budget and placements, the DiT
    bytes streamed per denoising step, and the peak device memory by the end of each stage (`peaks`)."""

    def __init__(self, plan: MemoryPlan):
        self.plan = plan
        self.peaks = PeakLog()
        self.streamed_bytes: int | None = None

    def __str__(self) -> str:
        plan, placement = self.plan, self.plan.placement
        lines = [f"memory budget {format_size(plan.budget.bytes)} ({plan.budget.source}); estimated peak "
                 f"{format_size(plan.peak)}; " + "; ".join(placement.describe())]
        if self.streamed_bytes:
            lines.append(f"DiT weights streamed per denoising step: {format_size(self.streamed_bytes)}")
        peaks = self.peaks.line()
        if peaks:
            lines.append(peaks)
        return "\n  ".join(lines)
