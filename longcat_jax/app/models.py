"""The models the app keeps loaded: one `LongCatPipeline`, loaded once and reused by every job.

A job changes only what a run may change on a loaded pipeline: its stats, its LoRAs (`user_loras`, read from disk
once per file and kept) and the stage settings the tasks set themselves (`use_dit`). Two things mean loading the
models again, which takes as long as the first load:
- another weight format: a job that asks for another `--quantize` mode (or dtype);
- a memory plan the loaded models do not serve: each request is planned for the device memory (its own
  `--max-device-memory` plan, as the CLI's), and a larger one may need a more frugal placement (the DiT streamed,
  smaller token chunks or VAE tiles) than the models were loaded with. They are then loaded with the most frugal of
  the two placements, and keep it for later jobs (`app.placement`).
The text encoder stays on the device between jobs where the request's plan has room for it, else it is released
after the job's prompts are encoded (as the CLI does) and loads again for the next new prompt (`app.text_encoder`).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from pathlib import Path

from longcat_jax.app.placement import covers, most_frugal
from longcat_jax.app.text_encoder import WarmTextEncoder
from longcat_jax.memory.plan import MemoryPlan, Placement
from longcat_jax.models.dit import LoRA, load_lora
from longcat_jax.models.dit.lora import parse_lora_spec
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.stats import RunStats
from longcat_jax.pipelines.tasks import DTYPES, RunPlan
from longcat_jax.sharding import make_mesh, shard_pipeline

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadSetting:
    """What a loaded pipeline's weights are: dtype name and `--quantize` mode; another one means a reload."""

    dtype: str
    quantize: str

    @classmethod
    def of(cls, plan: RunPlan) -> LoadSetting:
        """The request's dtype (default as the CLI's: float32 for the built-in model, else bfloat16) and mode."""
        request = plan.setup.request
        dtype = request.dtype or ("float32" if request.model_path is None else "bfloat16")
        return cls(dtype, request.quantize)

    def describe(self) -> str:
        return f"{self.dtype}, quantization {self.quantize}"


class WarmModels:
    """The pipeline of one checkpoint (`model_path` None: the built-in model), loaded on first use.

    `loads` counts the loads, so a caller (and the tests) can see that a second job reused the models; `placement`
    is the memory plan's placement they were loaded with."""

    def __init__(self, model_path: Path | str | None):
        self.model_path = model_path  # as given; each plan holds it resolved (a hub id -> its local folder)
        self.pipeline: LongCatPipeline | None = None
        self.setting: LoadSetting | None = None
        self.placement: Placement | None = None
        self.loads = 0
        self._loras: dict[tuple[Path, int], LoRA] = {}  # (file, its mtime) -> the LoRA read from it
        self._scaled: dict[tuple[Path, int, float], LoRA] = {}
        self.text = WarmTextEncoder()

    def for_plan(self, plan: RunPlan, stats: RunStats) -> LongCatPipeline:
        """The pipeline for a checked plan, loaded (in a `load models` stage of `stats`) unless it is already in the
        plan's weight format and placed to serve the plan's memory (see the module docstring); its stats are `stats`
        and its LoRAs the request's."""
        wanted = LoadSetting.of(plan)
        memory = plan.memory
        wanted_placement = memory.placement if memory is not None else Placement()
        reason = self._reload_reason(wanted, wanted_placement)
        if reason is not None:
            if self.pipeline is not None:
                logger.info("Loading the models again: %s", reason)
                if wanted == self.setting:  # the same weights: keep what earlier jobs needed as well
                    wanted_placement = most_frugal(self.placement, wanted_placement)
                    memory = dataclasses.replace(memory, placement=wanted_placement)
                # nothing is loaded until the load below ends (a failed or cancelled one leaves it so)
                self.pipeline, self.setting, self.placement = None, None, None
                gc.collect()  # the old weights go before the new ones arrive
            with stats.stage("load models"):
                self.pipeline = self._load(plan, wanted, memory)
            self.setting, self.placement = wanted, wanted_placement
            self.text.forget()
            self.loads += 1
        elif wanted_placement != self.placement:
            stats.notes.append(f"memory: this request's plan ({'; '.join(wanted_placement.describe())}) is served by "
                               "the models as loaded, placed more frugally (below)")
        pipe = self.pipeline
        pipe.stats = stats
        pipe.user_loras = [self._lora(spec) for spec in plan.setup.request.lora]
        return pipe

    def _reload_reason(self, wanted: LoadSetting, placement: Placement) -> str | None:
        """Why the models must be loaded (again) for a plan of `wanted` weights and `placement`; None if they serve."""
        if self.pipeline is None:
            return "first load"
        if wanted != self.setting:
            return f"{wanted.describe()} asked, {self.setting.describe()} loaded"
        if not covers(self.placement, placement):
            return (f"this request's memory plan needs a more frugal placement ({'; '.join(placement.describe())}) "
                    f"than the models were loaded with ({'; '.join(self.placement.describe())})")
        return None

    def _load(self, plan: RunPlan, setting: LoadSetting, memory: MemoryPlan | None) -> LongCatPipeline:
        request = plan.setup.request
        dtype = DTYPES[setting.dtype]
        logger.info("Loading %s (%s)", request.model_path or "the built-in model", setting.describe())
        if request.model_path is None:
            pipe = LongCatPipeline.builtin(dtype=dtype, quantize=setting.quantize, memory_plan=memory)
        else:  # the plan's path: a hub id resolved to its local folder
            pipe = LongCatPipeline.from_pretrained(request.model_path, dtype=dtype, dit_config=plan.setup.context.dit_config,
                                                   quantize=setting.quantize, memory_plan=memory)
        shard_pipeline(pipe, make_mesh(request.context_parallel), fsdp=request.fsdp)
        return pipe

    def _lora(self, spec: str) -> LoRA:
        """A `PATH[:MULTIPLIER]` LoRA: its file read once, one object per multiplier (so the DiT keeps its setting
        and its compiled step while the same LoRAs come back); a file written again is read again."""
        path, multiplier = parse_lora_spec(spec)
        path = path.resolve()
        file = (path, path.stat().st_mtime_ns)
        if file not in self._loras:
            self._loras[file] = load_lora(path)
        key = (*file, multiplier)
        if key not in self._scaled:
            self._scaled[key] = self._loras[file].with_multiplier(multiplier)
        return self._scaled[key]

    def encode_prompts(self, plan: RunPlan, stats: RunStats) -> None:
        """Encodes the prompts of a plan that `for_plan` served, loading the text encoder again or releasing it
        after as the plan's memory needs (`app.text_encoder`)."""
        self.text.prepare(self.pipeline, plan, self.placement, stats)
