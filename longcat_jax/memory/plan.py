"""The memory plan: per stage, what lives on the device and what streams from host memory, decided before any
model loads, within a device-memory budget.

    plan = plan_memory(work, models, budget_for("24GiB"))     # or budget_for(None): the device's own memory
    plan.log()                                                # the plan, stage by stage, with its estimates

Decisions, the fastest arrangement that fits every stage:
- text encoder on the device (released before the DiT loads), else on the CPU;
- DiT weights resident, else streamed block by block from pinned host memory (`streaming.StreamedDiT`);
  cross attention and FFN over all tokens at once, else in token chunks (`LongCatDiT.set_token_chunking`);
- VAE whole frames, else in the largest square tiles that fit.
What no arrangement fits is refused (`MemoryBudgetError`) before anything loads, naming the smallest budget that
holds the run, the largest size the budget holds, and the options that lower the need. A share of the budget stays
unplanned (`HEADROOM`, plus `GPU_RESERVE` on a GPU) for what the estimates do not see: XLA's workspaces,
fragmentation, and the estimates' own error.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from longcat_jax.errors import InputError
from longcat_jax.memory.device import DeviceMemory, device_memory
from longcat_jax.memory.footprint import (
    dit_activations,
    dit_cache_bytes,
    dit_flops,
    dit_weights,
    text_encoder_activations,
    text_encoder_weights,
    vae_activations,
    vae_weights,
)
from longcat_jax.memory.sizes import format_size, parse_size
from longcat_jax.memory.workloads import DiTStage, RunWork, VAEStage, video_frames
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.text_encoder.config import UMT5Config
from longcat_jax.models.vae.config import VAEConfig
from longcat_jax.sharding.spatial import split_axis

logger = logging.getLogger(__name__)

HEADROOM = 0.05  # share of the budget left unplanned
GPU_RESERVE = 256 * 2**20  # bytes more on a GPU: cuBLAS / cuDNN workspaces
CHUNK_CHOICES = (None, 32768, 8192)  # DiT token chunks, fastest first (None: all tokens at once)
TILE_CHOICES = (None, 512, 384, 256, 192, 128)  # VAE tile sides in pixels, largest first (None: whole frames)
TILE_OVERLAP = 64  # pixels two VAE tiles share (the original's 256-pixel tiles at stride 192)
PREFETCH = 1  # blocks copied ahead of the running one when streaming
# Rough rates for the time estimate (it only decides whether to warn that a run takes hours): a GPU's from the
# measured 168,960-token BSA step on an H100 (BENCHMARKS.md: about 5.9e15 FLOP in 10.3 s, rounded down), a CPU
# process's an assumption.
FLOPS_PER_SECOND = {"gpu": 400e12, "cpu": 50e9}
HOURS_WARNING = 3600.0


class MemoryBudgetError(InputError):
    """A run that cannot fit the device-memory budget (or the device), refused before any model loads;
    `smallest_budget`: the bytes of the smallest budget that holds it."""

    def __init__(self, message: str, smallest_budget: int):
        super().__init__(message)
        self.smallest_budget = smallest_budget


@dataclasses.dataclass(frozen=True)
class Models:
    """What the plan knows of the models: their configs, dtypes (bytes per parameter and activation), the DiT's
    quantization, the bytes of the LoRAs applied at run time, and whether the DiT loads only after the prompts are
    encoded (a checkpoint's pipeline; the built-in one makes every model at once)."""

    dit: DiTConfig
    text: UMT5Config
    vae: VAEConfig
    dit_dtype: object
    text_dtype: object
    vae_dtype: object
    quantize: str | None = None
    lora_bytes: int = 0
    dit_loads_after_text: bool = True


@dataclasses.dataclass(frozen=True)
class Budget:
    """The bytes a plan may use: `bytes`, where the figure comes from (`source`), the device's platform, and
    whether the user set it (`explicit`) or it is the device's own memory."""

    bytes: int
    source: str
    platform: str
    explicit: bool

    @property
    def usable(self) -> int:
        """The bytes the stages' estimates may add up to."""
        reserve = GPU_RESERVE if self.platform == "gpu" else 0
        return max(0, int(self.bytes * (1 - HEADROOM)) - reserve)

    def needed_for(self, device_bytes: int) -> int:
        """The budget whose usable part holds `device_bytes`."""
        reserve = GPU_RESERVE if self.platform == "gpu" else 0
        return math.ceil((device_bytes + reserve) / (1 - HEADROOM))


def budget_for(max_device_memory: str | int | None, memory: DeviceMemory | None = None) -> Budget:
    """The budget of `--max-device-memory` (a size like '24GiB', or bytes), or without one the device's memory.
    A budget above what the device may allocate is lowered to it, with a warning."""
    memory = memory or device_memory()
    if max_device_memory is None:
        return Budget(memory.bytes, memory.description, memory.platform, explicit=False)
    asked = parse_size(max_device_memory)
    source = f"--max-device-memory {max_device_memory}" if isinstance(max_device_memory, str) else \
        f"max_device_memory={format_size(asked)}"
    if asked > memory.bytes:
        logger.warning("%s is more than this device may allocate (%s, %s); planning for that instead",
                       source, format_size(memory.bytes), memory.description)
        # the device's memory is the limit now: a refusal names a larger device, not a larger budget
        return Budget(memory.bytes, f"{memory.description}, below {source}", memory.platform, explicit=False)
    return Budget(asked, source, memory.platform, explicit=True)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where each model runs: `text_on_cpu`; the DiT's blocks `dit_streamed` from host memory; the DiT's cross
    attention and FFN in chunks of `chunk_tokens` tokens (None: all at once); VAE tiles of `vae_tile` pixels (None:
    whole frames)."""

    text_on_cpu: bool = False
    dit_streamed: bool = False
    chunk_tokens: int | None = None
    vae_tile: int | None = None

    def describe(self) -> list[str]:
        """One line per model for the log."""
        text = "on the CPU" if self.text_on_cpu else "on the device, released before the DiT loads"
        weights = (f"streamed block by block from pinned host memory ({PREFETCH} block copied ahead)"
                   if self.dit_streamed else "resident on the device")
        chunks = ("all tokens at once" if self.chunk_tokens is None
                  else f"cross attention and FFN in chunks of at most {self.chunk_tokens:,} tokens (whole frames)")
        vae = ("whole frames" if self.vae_tile is None
               else f"tiles of {self.vae_tile}x{self.vae_tile} pixels, stride {self.vae_tile - TILE_OVERLAP}")
        return [f"text encoder: {text}", f"DiT weights: {weights}", f"DiT activations: {chunks}", f"VAE: {vae}"]


@dataclasses.dataclass(frozen=True)
class StageEstimate:
    """One stage's estimate: its name and size, the device bytes of weights and of activations at its peak, and
    its seconds (None where not estimated)."""

    name: str
    size: str
    weights: int
    activations: int
    seconds: float | None = None

    @property
    def device_bytes(self) -> int:
        return self.weights + self.activations


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """A checked plan: the budget, the placement, each stage's estimate, the DiT bytes streamed per denoising step
    (0 when resident) and the run's estimated seconds."""

    budget: Budget
    placement: Placement
    stages: tuple[StageEstimate, ...]
    streamed_bytes_per_step: int = 0
    seconds: float = 0.0

    @property
    def peak(self) -> int:
        """The largest stage estimate."""
        return max((s.device_bytes for s in self.stages), default=0)

    def lines(self) -> list[str]:
        """The plan as the log and the summary print it."""
        b = self.budget
        lines = [f"Memory plan: budget {format_size(b.bytes)} ({b.source}); stages planned within "
                 f"{format_size(b.usable)}, the rest left for what estimates do not see"]
        lines += [f"  {line}" for line in self.placement.describe()]
        if self.streamed_bytes_per_step:
            lines.append(f"  DiT bytes streamed per denoising step: {format_size(self.streamed_bytes_per_step)}")
        lines.append(f"  {'stage':<24}{'size':<36}{'device (weights + activations)':>40}")
        for s in self.stages:
            lines.append(f"  {s.name:<24}{s.size:<36}{format_size(s.device_bytes):>12} = "
                         f"{format_size(s.weights):>11} + {format_size(s.activations):>11}")
        lines.append(f"  estimated peak {format_size(self.peak)} of {format_size(b.usable)}; estimated denoising "
                     f"time {_duration(self.seconds)} (the DiT's FLOPs at a rough rate; loading, compiling and the "
                     "VAE come on top)")
        return lines

    def log(self) -> None:
        for line in self.lines():
            logger.info("%s", line)
        if self.seconds > HOURS_WARNING:
            logger.warning("this run is estimated to take about %s (its FLOP count at %.0f TFLOP/s, a rough %s "
                           "rate); fewer steps, frames or segments shorten it", _duration(self.seconds),
                           FLOPS_PER_SECOND.get(self.budget.platform, FLOPS_PER_SECOND["gpu"]) / 1e12,
                           self.budget.platform)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    if seconds >= 60:
        return f"{seconds / 60:.1f} minutes"
    return f"{seconds:.0f} s"


def _bytes_of(dtype) -> int:
    return np.dtype(dtype).itemsize


class _Estimator:
    """Stage estimates of one run's models on one platform, for any placement, per device of `devices` (context
    parallel: each device holds 1/n of the tokens, and with `fsdp` 1/n of the DiT's blocks)."""

    def __init__(self, models: Models, work: RunWork, platform: str, devices: int = 1, fsdp: bool = False):
        self.models = models
        self.work = work
        self.platform = platform
        self.devices = devices
        self.fsdp = fsdp
        self.dit = dit_weights(models.dit, models.dit_dtype, models.quantize)
        self.vae = vae_weights(models.vae, models.vae_dtype)
        self.text = text_encoder_weights(models.text, models.text_dtype)
        self.lora_per_block = models.lora_bytes // max(models.dit.depth, 1)

    def dit_on_device(self, placement: Placement) -> int:
        """DiT weights on the device during its stages (LoRA factors included)."""
        if placement.dit_streamed:
            return self.dit.ends + (PREFETCH + 1) * (self.dit.block + self.lora_per_block)
        blocks = self.dit.depth * self.dit.block + self.models.lora_bytes
        if self.fsdp and self.devices > 1:  # one device: `shard_pipeline` does not split
            blocks = blocks // self.devices + self.dit.block  # a block is gathered whole while it runs
        return self.dit.ends + blocks

    def text_stage(self, placement: Placement) -> StageEstimate:
        work = self.work
        size = f"{work.prompts} prompts x {work.text_length} tokens"
        resident_dit = 0 if self.models.dit_loads_after_text else self.dit_on_device(placement)
        if placement.text_on_cpu:
            return StageEstimate("text encoding", size, self.vae + resident_dit, 0)
        activations = text_encoder_activations(self.models.text, work.prompts, work.text_length)
        return StageEstimate("text encoding", size, self.text + self.vae + resident_dit, activations)

    def dit_stage(self, stage: DiTStage, placement: Placement) -> StageEstimate:
        m = self.models
        a = _bytes_of(m.dit_dtype)
        activations = dit_activations(m.dit, stage.call, act_bytes=a, chunk_tokens=placement.chunk_tokens,
                                      platform=self.platform, quantize=m.quantize) // self.devices
        cache = 2 * dit_cache_bytes(m.dit, stage.cache_tokens, a) if stage.cache_tokens else 0
        seconds = stage.steps * stage.repeats * dit_flops(m.dit, stage.call) / FLOPS_PER_SECOND.get(
            self.platform, FLOPS_PER_SECOND["gpu"])
        return StageEstimate(stage.name, stage.size, self.dit_on_device(placement) + self.vae, activations + cache,
                             seconds)

    def vae_stage(self, stage: VAEStage, placement: Placement) -> StageEstimate:
        scale = 1 if stage.encode else self.models.vae.scale_factor_spatial  # a decode's input: the latents
        split = split_axis(stage.height // scale, stage.width // scale, self.devices) is not None
        activations = vae_activations(self.models.vae, frames=stage.frames, height=stage.height, width=stage.width,
                                      act_bytes=_bytes_of(self.models.vae_dtype), tile=placement.vae_tile,
                                      encode=stage.encode) // (self.devices if split else 1)
        size = f"{stage.frames} frames x {stage.height}x{stage.width}"
        return StageEstimate(stage.name, size, self.dit_on_device(placement) + self.vae, activations)

    def all_stages(self, placement: Placement) -> list[StageEstimate]:
        text = [self.text_stage(placement)] if self.work.prompts else []
        return (text + [self.dit_stage(s, placement) for s in self.work.dit]
                + [self.vae_stage(s, placement) for s in self.work.vae])

    def streamed_per_step(self, placement: Placement) -> int:
        return self.dit.depth * (self.dit.block + self.lora_per_block) if placement.dit_streamed else 0


def _fits(estimates, usable: int) -> bool:
    return all(e.device_bytes <= usable for e in estimates)


def _choices(devices: int) -> tuple[tuple[bool, ...], tuple[int | None, ...], tuple[int | None, ...]]:
    """(DiT streamed?, chunk tokens, VAE tiles) to try, fastest first. Several devices (context parallel, its
    tokens split over them, the VAE in strips) keep the DiT resident and whole: streaming and chunks are planned
    for one device."""
    if devices > 1:
        return (False,), (None,), (None,)
    return (False, True), CHUNK_CHOICES, TILE_CHOICES


def placements(devices: int = 1) -> list[Placement]:
    """Every placement the plan may choose, fastest first (the text encoder's place aside)."""
    streamed, chunks, tiles = _choices(devices)
    return [Placement(False, s, c, t) for s in streamed for c in chunks for t in tiles]


def least_memory(estimator: _Estimator) -> tuple[Placement, StageEstimate]:
    """The placement whose largest stage needs the least device memory, and that stage."""
    best = None
    for placement in placements(estimator.devices):
        placement = dataclasses.replace(placement, text_on_cpu=True)
        worst = max(estimator.all_stages(placement), key=lambda s: s.device_bytes)
        if best is None or worst.device_bytes < best[1].device_bytes:
            best = (placement, worst)
    return best


def choose_placement(estimator: _Estimator, usable: int) -> Placement | None:
    """The fastest placement whose every stage fits `usable` bytes; None if none does."""
    text_on_cpu = estimator.text_stage(Placement()).device_bytes > usable
    streamed_choices, chunks, tiles = _choices(estimator.devices)
    for dit_streamed in streamed_choices:
        for chunk in chunks:
            base = Placement(text_on_cpu, dit_streamed, chunk)
            if not _fits([estimator.dit_stage(s, base) for s in estimator.work.dit], usable):
                continue
            if estimator.work.prompts and not _fits([estimator.text_stage(base)], usable):
                continue
            for tile in tiles:
                placement = dataclasses.replace(base, vae_tile=tile)
                if _fits([estimator.vae_stage(s, placement) for s in estimator.work.vae], usable):
                    return placement
    return None


def plan_memory(work: RunWork, models: Models, budget: Budget, *, devices: int = 1, fsdp: bool = False) -> MemoryPlan:
    """The plan of `work` within `budget` (see the module docstring), per device of `devices` (context parallel;
    `fsdp`: the DiT's blocks split over them); a MemoryBudgetError, before anything loads, when nothing fits."""
    estimator = _Estimator(models, work, budget.platform, devices, fsdp)
    placement = choose_placement(estimator, budget.usable)
    if placement is None:
        raise MemoryBudgetError(*_refusal(estimator, budget))
    stages = estimator.all_stages(placement)
    seconds = sum(s.seconds or 0.0 for s in stages)
    return MemoryPlan(budget, placement, tuple(stages), estimator.streamed_per_step(placement), seconds)


def forced_plan(work: RunWork, models: Models, budget: Budget, placement: Placement) -> MemoryPlan:
    """A plan with `placement` as given (tests, benchmarks: e.g. streaming on a device that would hold the
    weights); its estimates are still computed and logged, but not enforced."""
    estimator = _Estimator(models, work, budget.platform)
    stages = estimator.all_stages(placement)
    return MemoryPlan(budget, placement, tuple(stages), estimator.streamed_per_step(placement),
                      sum(s.seconds or 0.0 for s in stages))


def _refusal(estimator: _Estimator, budget: Budget) -> tuple[str, int]:
    """Why nothing fits, and what would: the smallest budget, the largest size at this budget, the options; and
    the smallest budget's bytes."""
    frugal, worst = least_memory(estimator)
    needed = budget.needed_for(worst.device_bytes)
    where = (f"the budget {format_size(budget.bytes)} ({budget.source})" if budget.explicit
             else f"this device's {format_size(budget.bytes)} ({budget.source})")
    per_device = f" per device of {estimator.devices}" if estimator.devices > 1 else ""
    lines = [f"this run does not fit {where}: its {worst.name} stage ({worst.size}) needs an estimated "
             f"{format_size(worst.device_bytes)} of device memory{per_device} even with the most frugal plan "
             f"({'; '.join(frugal.describe())}), and {format_size(budget.usable)} of the budget is planned."]
    lines.append(f"The smallest budget that holds it: {format_size(needed)}"
                 + (" (--max-device-memory)." if budget.explicit else " (a device with that much memory)."))
    fitting = _largest_fitting(estimator, worst.name, budget.usable, frugal)
    if fitting:
        lines.append(fitting)
    options = _lowering_options(estimator, worst, budget)
    if options:
        lines.append("Options that lower the need: " + "; ".join(options) + ".")
    return " ".join(lines), needed


def _largest_fitting(estimator: _Estimator, stage_name: str, usable: int, frugal: Placement) -> str | None:
    """The largest frame count and height the failing stage would fit at (the rest of its size kept)."""
    dit_stage = next((s for s in estimator.work.dit if s.name == stage_name), None)
    if dit_stage is not None:
        t, h, w = dit_stage.call.grid

        def fits_grid(grid) -> bool:
            resized = dataclasses.replace(dit_stage, call=dataclasses.replace(dit_stage.call, grid=grid))
            return estimator.dit_stage(resized, frugal).device_bytes <= usable

        frames = _largest(lambda n: fits_grid((n, h, w)), t)
        rows = _largest(lambda n: fits_grid((t, n, w)), h)
        parts = []
        if frames:
            parts.append(f"{frames} latent frames ({video_frames(frames)} video frames) at this size")
        if rows:
            parts.append(f"a height of {rows * 16} pixels at this width and frame count")
        if not parts:
            return f"No size of the {stage_name} stage fits: the weights alone exceed the budget."
        return f"The {stage_name} stage would fit at up to " + ", or ".join(parts) + "."
    vae_stage = next((s for s in estimator.work.vae if s.name == stage_name), None)
    if vae_stage is not None:
        def fits_height(rows: int) -> bool:
            resized = dataclasses.replace(vae_stage, height=rows * 8)
            return estimator.vae_stage(resized, frugal).device_bytes <= usable

        rows = _largest(fits_height, vae_stage.height // 8)
        if rows:
            return f"The {stage_name} stage would fit at a height of up to {rows * 8} pixels at this width."
    return None


def _largest(fits, current: int) -> int:
    """The largest n in [1, current) with fits(n) (fits is monotone: true up to some n), 0 if none."""
    if current <= 1 or not fits(1):
        return 0
    low, high = 1, current - 1
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _lowering_options(estimator: _Estimator, worst: StageEstimate, budget: Budget) -> list[str]:
    options = []
    models = estimator.models
    if models.quantize in (None, "none"):
        quantized = _Estimator(dataclasses.replace(models, quantize="int8"), estimator.work, estimator.platform,
                               estimator.devices, estimator.fsdp)
        needed = budget.needed_for(least_memory(quantized)[1].device_bytes)
        if needed < 0.95 * budget.needed_for(worst.device_bytes):  # only where it helps
            options.append(f"--quantize int8 or fp8 (DiT weights {format_size(estimator.dit.total)} -> "
                           f"{format_size(quantized.dit.total)}; smallest budget then {format_size(needed)})")
    if worst.name.startswith("refine"):
        options.append("--spatial-refine-only (refinement tokens halved)")
    options.append("a smaller --height/--width or fewer --num-frames")
    return options
