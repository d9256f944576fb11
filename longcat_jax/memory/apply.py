"""A memory plan applied to a pipeline's models: where each loads, how the DiT runs, the VAE's tiles, and the lines
the run's summary repeats (budget, placements, bytes streamed per step, peak device memory by stage).

Each function logs what it applies when it departs from the default (everything on the device, all at once), so a
run's log shows the plan carried out, not only the plan made.
"""

from __future__ import annotations

import logging

import jax
from jax.sharding import SingleDeviceSharding

from longcat_jax.memory.device import PINNED_HOST
from longcat_jax.memory.peaks import PeakLog
from longcat_jax.memory.plan import TILE_OVERLAP, MemoryPlan
from longcat_jax.memory.sizes import format_size
from longcat_jax.memory.streaming import StreamedDiT
from longcat_jax.models.dit.transformer import LongCatDiT
from longcat_jax.models.vae.tiling import TilingConfig

logger = logging.getLogger(__name__)


def text_encoder_device(plan: MemoryPlan | None) -> jax.Device | None:
    """Where the text encoder loads: the CPU when the plan says so, else the default device (None)."""
    if plan is None or not plan.placement.text_on_cpu:
        return None
    device = jax.devices("cpu")[0]
    logger.info("Memory plan: the text encoder loads on %s and encodes the prompts there", device)
    return device


def dit_sharding(plan: MemoryPlan | None) -> SingleDeviceSharding | None:
    """Where the DiT's weights load: pinned host memory when they stream, else the default device (None)."""
    if plan is None or not plan.placement.dit_streamed:
        return None
    device = jax.local_devices()[0]
    logger.info("Memory plan: the DiT's weights load into %s's pinned host memory, to be streamed block by block",
                device)
    return SingleDeviceSharding(device, memory_kind=PINNED_HOST)


def vae_tiling(plan: MemoryPlan | None) -> TilingConfig | None:
    """The VAE's tiles when the plan picks a tile size; None: the VAE's own setting (whole frames up to 720p)."""
    if plan is None or plan.placement.vae_tile is None:
        return None
    tile = plan.placement.vae_tile
    logger.info("Memory plan: the VAE encodes and decodes in tiles of %dx%d pixels, stride %d", tile, tile,
                tile - TILE_OVERLAP)
    return TilingConfig.square(tile, TILE_OVERLAP)


def configure_dit(dit: LongCatDiT, plan: MemoryPlan | None) -> None:
    """The plan's token chunks on the DiT's blocks."""
    if plan is not None:
        dit.set_token_chunking(plan.placement.chunk_tokens)
        if plan.placement.chunk_tokens is not None:
            logger.info("Memory plan: the DiT's cross attention and FFN run in chunks of whole latent frames, at most "
                        "%s tokens each", f"{plan.placement.chunk_tokens:,}")


def streamed_dit(dit: LongCatDiT, plan: MemoryPlan | None) -> StreamedDiT | None:
    """A `StreamedDiT` of `dit` when the plan streams its weights (make one per DiT setting: LoRAs, BSA)."""
    if plan is None or not plan.placement.dit_streamed:
        return None
    return StreamedDiT(dit)


class MemoryNotes:
    """The run summary's memory lines (a `RunStats` note: printed with str()): the budget and placements, the DiT
    bytes streamed per denoising step (`streamed_bytes`, set once per DiT setting: each LoRA changes them), and the
    peak device memory by the end of each stage (`peaks`) with the highest against the budget."""

    def __init__(self, plan: MemoryPlan):
        self.plan = plan
        self.peaks = PeakLog()
        self.streamed_per_setting: list[int] = []

    @property
    def streamed_bytes(self) -> int | None:
        """The bytes streamed per denoising step by the latest DiT setting (None: nothing streamed)."""
        return self.streamed_per_setting[-1] if self.streamed_per_setting else None

    @streamed_bytes.setter
    def streamed_bytes(self, value: int) -> None:
        self.streamed_per_setting.append(int(value))

    def __str__(self) -> str:
        plan, placement = self.plan, self.plan.placement
        lines = [f"memory budget {format_size(plan.budget.bytes)} ({plan.budget.source}); estimated peak "
                 f"{format_size(plan.peak)}; " + "; ".join(placement.describe())]
        if self.streamed_per_setting:
            sizes = ", then ".join(format_size(b) for b in self.streamed_per_setting)
            lines.append(f"DiT weights streamed per denoising step: {sizes}"
                         + (" (one figure per DiT setting: its LoRAs)" if len(self.streamed_per_setting) > 1 else ""))
        peaks = self.peaks.line()
        if peaks:
            lines.append(peaks)
            stage, peak = self.peaks.highest
            within = "within" if peak <= plan.budget.bytes else "OVER"
            lines.append(f"highest peak {format_size(peak)} (by the end of {stage}): {within} the budget of "
                         f"{format_size(plan.budget.bytes)}")
        return "\n  ".join(lines)
