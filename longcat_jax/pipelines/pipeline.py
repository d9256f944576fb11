"""`LongCatPipeline`: the three models, tokenizer, scheduler config and LoRAs of one checkpoint, with the caches
and timings of a run.

    pipe = LongCatPipeline.from_pretrained("LongCat-Video", dtype=jnp.bfloat16)   # original or converted folder
    pipe = LongCatPipeline.from_pretrained("meituan-longcat/LongCat-Video")       # a hub id: downloaded, cached
    pipe = LongCatPipeline.builtin()                                               # tiny random model, no download

The task functions (`t2v.generate_t2v`, `i2v.generate_i2v`, `continuation.generate_continuation`,
`long_video.generate_long_video`, `refine.generate_refine`) take a pipeline. It configures the DiT per stage
(`use_dit`: the stage's BSA, which LoRAs), encodes prompts once (cached, so the encoder can be released early) and
moves between pixels and normalised latents (`encode_frames`, `decode_latents`). `plan_context` is what the tasks
plan with: the run defaults, the DiT config and the BSA asked for with `bsa_config`.

A memory plan (`longcat_jax.memory`: `memory_plan=`, or `max_device_memory=` to make one) decides where the models
load and run: the text encoder on the device or the CPU, the DiT resident or streamed from pinned host memory, its
token chunks, the VAE's tiles. A checkpoint's DiT then loads on first use, after the prompts are encoded and the
text encoder released.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kernels import BSAParams
from longcat_jax.bsa_config import read_bsa_config
from longcat_jax.checkpoint.hub import resolve_model_path
from longcat_jax.checkpoint.layout import (
    DISTILL_LORA,
    REFINE_LORA,
    TEXT_ENCODER,
    TOKENIZER,
    VAE,
    check_checkpoint,
    dit_folder,
    lora_path,
)
from longcat_jax.checkpoint.safetensors import check_checkpoint_shards
from longcat_jax.errors import CheckpointError, InputError, LongCatError
from longcat_jax.memory.apply import (
    MemoryNotes,
    configure_dit,
    dit_sharding,
    streamed_dit,
    text_encoder_device,
    vae_tiling,
)
from longcat_jax.memory.plan import MemoryPlan
from longcat_jax.memory.run import pipeline_memory_plan
from longcat_jax.models.dit import DiTConfig, LongCatDiT, LoRA, disable_loras, enable_loras, load_dit, load_lora
from longcat_jax.models.dit.lora import parse_lora_spec
from longcat_jax.models.text_encoder.loading import load_text_encoder
from longcat_jax.models.text_encoder.prompt import encode_prompt, is_released, release_text_encoder
from longcat_jax.models.text_encoder.tokenizer import load_tokenizer
from longcat_jax.models.text_encoder.umt5 import UMT5Encoder
from longcat_jax.models.vae import load_vae
from longcat_jax.pipelines.bsa import STAGE_DEFAULT, BSARequest
from longcat_jax.pipelines.denoise import Denoiser, TextCondition
from longcat_jax.pipelines.options import PlanContext
from longcat_jax.pipelines.scheduler import SchedulerConfig
from longcat_jax.pipelines.stats import RunStats
from longcat_jax.presets import RELEASED_DEFAULTS, TINY_DEFAULTS, PipelineDefaults, build_tiny_models
from longcat_jax.progress import ticking
from longcat_jax.sharding.spatial import split_spatially, to_host
from longcat_jax.video_io import to_uint8_frames

logger = logging.getLogger(__name__)

LoRASpec = str | tuple[str | Path, float] | LoRA  # "PATH[:MULTIPLIER]", (path, multiplier) or a loaded LoRA


class LongCatPipeline:
    """The models of one checkpoint and what a run needs around them (see the module docstring)."""

    def __init__(
        self,
        dit: LongCatDiT | Callable[[], LongCatDiT],
        vae,
        text_encoder,
        tokenizer,
        *,
        scheduler_config: SchedulerConfig | None = None,
        bsa: BSARequest = STAGE_DEFAULT,
        loras: Sequence[LoRA] = (),
        named_loras: dict[str, LoRA | Path] | None = None,
        defaults: PipelineDefaults = RELEASED_DEFAULTS,
        builtin: bool = False,
        memory_plan: MemoryPlan | None = None,
        dit_config: DiTConfig | None = None,
        dit_dtype=None,
        text_encoder_loader: Callable[[], UMT5Encoder] | None = None,
    ):
        """`dit`: the DiT, or a function loading it on first use (then `dit_config` and `dit_dtype` are needed), or
        None (a pipeline for the VAE and text alone); `memory_plan`: placements to apply (see the module docstring;
        None: everything on the default device); `text_encoder_loader`: a function loading `text_encoder` again
        (`reload_text_encoder`; None: it cannot be)."""
        if dit is None or isinstance(dit, LongCatDiT):
            self._dit, self._load_dit = dit, None
            if dit is not None:
                dit_config, dit_dtype = dit.config, dit.dtype
        elif dit_config is None or dit_dtype is None:
            raise InputError("a DiT loaded on first use needs dit_config and dit_dtype")
        else:
            self._dit, self._load_dit = None, dit
        self.dit_config = dit_config
        self.dit_dtype = dit_dtype
        self.memory_plan = memory_plan
        self.memory_notes = MemoryNotes(memory_plan) if memory_plan is not None else None
        self.vae = vae
        self.text_encoder = text_encoder
        self._load_text_encoder = text_encoder_loader
        self.tokenizer = tokenizer
        self.scheduler_config = scheduler_config or SchedulerConfig()
        self.bsa = bsa  # what every stage runs unless its task asks otherwise (`pipelines.bsa.resolve_bsa`)
        self.user_loras = list(loras)
        self._named_loras = dict(named_loras or {})
        self.defaults = defaults
        self.builtin = builtin
        self.stats = RunStats()
        if self._dit is not None:
            configure_dit(self._dit, memory_plan)
        if (tiling := vae_tiling(memory_plan)) is not None:
            self.vae.tiling = tiling
        self._texts: dict[str, tuple[jax.Array, jax.Array]] = {}
        self._dit_setting: tuple | None = None
        self._denoiser: Denoiser | None = None
        self.mesh = None  # set by longcat_jax.sharding.shard_pipeline: the VAE then works in strips over it

    # ------------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        model_path: str | Path,
        dtype=jnp.bfloat16,
        bsa_config: str | Path | None = None,
        loras: Sequence[LoRASpec] = (),
        *,
        dit_config: DiTConfig | None = None,
        quantize: str | None = None,
        max_device_memory: str | int | None = None,
        memory_plan: MemoryPlan | None = None,
    ) -> LongCatPipeline:
        """Loads an original LongCat-Video checkpoint folder, FastVideo's conversion of it (`transformer/` for `dit/`:
        `longcat_jax.checkpoint.layout`) or our converted one; `model_path` may also be a
        Hugging Face hub id (`meituan-longcat/LongCat-Video`, downloaded into the hub cache on first use; an existing
        folder of the same name wins: `longcat_jax.checkpoint.hub`).

        dtype: weights and activations of the DiT, VAE and text encoder (bfloat16 for real use, float32 for
        checks). bsa_config: a `--bsa-config` preset name (`balanced`, ...) or JSON file, the BSA of every stage whose
        task does not ask otherwise.
        loras: extra LoRAs applied in every stage, as paths (`PATH[:MULTIPLIER]`), (path, multiplier) or LoRA.
        dit_config: the checkpoint's `dit/config.json`, when the caller has read it already.
        quantize: 'fp8' (FP8 weights and GEMMs: Ada/Hopper), 'fp8-weight-only' or 'int8' (weight-only, any GPU)
        quantizes the DiT's large Linears while loading (`longcat_jax.quantization`); None/'none': as stored.
        max_device_memory: a device-memory budget ('24GiB', '48GB' or bytes): a plan for the released pipeline's
        largest stages (480p t2v with guidance, its 720p refinement) within it is made and logged, and refused when
        nothing fits (`longcat_jax.memory.plan.MemoryBudgetError`). memory_plan: a plan made already (the CLI's,
        for its run). With either, the DiT loads on first use, after the prompts are encoded.
        """
        bsa = _bsa_request(bsa_config)
        user_loras = [_as_lora(spec) for spec in loras]
        path = check_checkpoint(resolve_model_path(model_path))  # a hub id: after the cheap checks above
        check_checkpoint_shards(path)  # a partial download: refused before any model loads
        dit_config = dit_config or DiTConfig.from_json(dit_folder(path) / "config.json")  # dit/ or FastVideo's transformer/
        if memory_plan is None and max_device_memory is not None:
            memory_plan = pipeline_memory_plan(path, max_device_memory, dit_config=dit_config, dtype=dtype,
                                               quantize=quantize, user_lora_elements=sum(
                                                   factors.down.size + factors.up.size for lora in user_loras
                                                   for factors in lora.modules.values()))

        def dit() -> LongCatDiT:
            return load_dit(dit_folder(path), config=dit_config, dtype=dtype, quantize=quantize,
                            device=dit_sharding(memory_plan))

        def text_encoder() -> UMT5Encoder:
            return load_text_encoder(path / TEXT_ENCODER, dtype=dtype, device=text_encoder_device(memory_plan))

        vae = load_vae(path / VAE, dtype=dtype)
        tokenizer = load_tokenizer(path / TOKENIZER)
        named = {name: p for name in (DISTILL_LORA, REFINE_LORA) if (p := lora_path(path, name)) is not None}
        return cls(
            dit if memory_plan is not None else dit(),
            vae,
            text_encoder(),
            tokenizer,
            scheduler_config=SchedulerConfig.load(path),
            bsa=bsa,
            loras=user_loras,
            named_loras=named,
            memory_plan=memory_plan,
            dit_config=dit_config,
            dit_dtype=dtype,
            text_encoder_loader=text_encoder,
        )

    @classmethod
    def builtin(
        cls,
        dtype=jnp.float32,
        bsa_config: str | Path | None = None,
        loras: Sequence[LoRASpec] = (),
        *,
        quantize: str | None = None,
        memory_plan: MemoryPlan | None = None,
    ) -> LongCatPipeline:
        """The small built-in model (random weights, logged as such) with stand-in distill/refinement LoRAs;
        `quantize` as in `from_pretrained`; `memory_plan` placements to apply (the CLI's plan of its run)."""
        models = build_tiny_models(dtype=dtype, quantize=quantize)
        device = text_encoder_device(memory_plan)
        graph, state = nnx.split(models.text_encoder)
        host_copy = jax.tree.map(np.array, state)  # a few KiB: what `reload_text_encoder` loads from

        def text_encoder() -> UMT5Encoder:
            return nnx.merge(graph, jax.device_put(host_copy, device))

        if device is not None:
            nnx.update(models.text_encoder, jax.device_put(state, device))
        return cls(
            models.dit,
            models.vae,
            models.text_encoder,
            models.tokenizer,
            bsa=_bsa_request(bsa_config),
            loras=[_as_lora(spec) for spec in loras],
            named_loras=models.loras,
            defaults=TINY_DEFAULTS,
            builtin=True,
            memory_plan=memory_plan,
            text_encoder_loader=text_encoder,
        )

    def named_lora(self, name: str) -> LoRA:
        """The checkpoint's `cfg_step_lora` or `refinement_lora`, read on first use."""
        entry = self._named_loras.get(name)
        if entry is None:
            raise CheckpointError(f"this checkpoint has no lora/{name}.safetensors; download the lora/ folder")
        if not isinstance(entry, LoRA):
            entry = load_lora(entry, name=name)
            self._named_loras[name] = entry
        return entry

    # ------------------------------------------------------------------------------------------------- the DiT

    @property
    def dit(self) -> LongCatDiT:
        """The DiT; one loaded on first use (see the module docstring) loads here."""
        if self._dit is None:
            if not is_released(self.text_encoder):
                logger.info("Loading the DiT before the text encoder is released (the memory plan assumed after)")
            with self.stats.stage("load DiT"):
                self._dit = self._load_dit()
            configure_dit(self._dit, self.memory_plan)
        return self._dit

    @property
    def stats(self) -> RunStats:
        """The run's timings; a new one gets the memory plan's summary lines as a note."""
        return self._stats

    @stats.setter
    def stats(self, stats: RunStats) -> None:
        self._stats = stats
        if self.memory_notes is not None:
            stats.notes.append(self.memory_notes)

    @property
    def plan_context(self) -> PlanContext:
        """What the tasks plan with: the run defaults, the DiT config and the BSA asked for every stage."""
        return PlanContext(self.defaults, self.dit_config, self.bsa)

    def use_dit(self, *, bsa: BSAParams | None, loras: Sequence[LoRA] = ()) -> Denoiser:
        """Sets the DiT's block-sparse attention (None: dense) and run-time LoRAs (the user's are added) for the
        next stage; a stage's BSA comes from `pipelines.bsa.resolve_bsa`, which logs it."""
        loras = [*loras, *self.user_loras]
        setting = (bsa, tuple((id(lora), lora.multiplier) for lora in loras))
        if setting != self._dit_setting:
            self.dit.set_bsa(bsa)
            if loras:
                enable_loras(self.dit, loras)
            else:
                disable_loras(self.dit)
            self._dit_setting = setting
            streamed = streamed_dit(self.dit, self.memory_plan)
            if streamed is not None:
                self.memory_notes.streamed_bytes = streamed.bytes_per_call
            self._denoiser = Denoiser(self.dit, streamed=streamed)
            if loras:
                logger.info("LoRAs on: %s", ", ".join(f"{lora.name} x{lora.multiplier:g}" for lora in loras))
        return self._denoiser

    # ------------------------------------------------------------------------------------------------ the text

    @contextlib.contextmanager
    def recording_into(self, stats: RunStats) -> Iterator[RunStats]:
        """Records the stages run in the block into `stats` (a batched video's own, `RunStats.branch`), then into
        the pipeline's own again."""
        shared, self.stats = self.stats, stats
        try:
            yield stats
        finally:
            self.stats = shared

    def encode_text(self, prompt: str, negative_prompt: str | None = None) -> TextCondition:
        """Embeddings of `prompt` (and of `negative_prompt` for guidance), cached per prompt."""
        missing = [p for p in (prompt, negative_prompt) if p is not None and p not in self._texts]
        if missing:
            if is_released(self.text_encoder):
                raise InputError(f"prompt {missing[0]!r} was not encoded before the text encoder was released")
            with self.stats.stage("text encoding"):
                encoded = encode_prompt(
                    self.text_encoder, self.tokenizer, missing, max_length=self.defaults.max_sequence_length,
                    dtype=self.dit_dtype,
                )
                for index, text in enumerate(missing):
                    self._texts[text] = (encoded.embeddings[index : index + 1], encoded.mask[index : index + 1])
            self._mark_peak("text encoding")
        embeddings, mask = self._texts[prompt]
        if negative_prompt is None:
            return TextCondition(embeddings, mask)
        return TextCondition(embeddings, mask, *self._texts[negative_prompt])

    def clear_text_cache(self) -> None:
        """Drops the cached prompt embeddings (device memory): a pipeline kept loaded for many runs (the web app)
        would otherwise hold every prompt ever asked. A prompt asked again is encoded again, which needs the text
        encoder not released."""
        self._texts.clear()

    def release_text_encoder(self) -> None:
        """Frees the text encoder's memory; prompts encoded before stay usable."""
        if not is_released(self.text_encoder):
            release_text_encoder(self.text_encoder)

    def reload_text_encoder(self) -> None:
        """Loads the released text encoder again (a `load text encoder` stage), where it loaded first: a pipeline
        kept loaded for many runs (the web app) may release it after each run's prompts, as the CLI does, and needs it
        again for the next run's new prompts. The text encoder alone loads; the DiT and VAE stay as they are."""
        if not is_released(self.text_encoder):
            return
        if self._load_text_encoder is None:
            raise LongCatError("this pipeline's text encoder was released and the pipeline was given its models, so it "
                               "cannot load it again; make the pipeline with from_pretrained or builtin, or encode every "
                               "prompt before release_text_encoder")
        with self.stats.stage("load text encoder"):
            self.text_encoder = self._load_text_encoder()

    # ------------------------------------------------------------------------------------------------ the VAE

    def encode_frames(self, video: jax.Array | np.ndarray, key: jax.Array) -> jax.Array:
        """Video [1, 3, F, H, W] in [-1, 1] -> normalised latents [1, C, T, H/8, W/8], sampled from the posterior
        with `key` as the original does. F = 4k (no leading single frame) drops its last 3 frames, as the
        original's chunked encoder does."""
        frames = video.shape[2]
        usable = 1 + (frames - 1) // 4 * 4
        if usable != frames:
            video = video[:, :, :usable]
        video = jnp.asarray(video, self.vae.dtype)
        if self.mesh is not None:
            video = split_spatially(video, self.mesh)
        with ticking(f"VAE encode ({usable} frames)"):  # one compiled pass: time elapsed, not steps
            distribution = self.vae.encode(video)
            latents = self.vae.normalize(distribution.sample(key).astype(jnp.float32)).block_until_ready()
        self._mark_peak("encode")
        return latents

    def decode_latents(self, latents: jax.Array) -> np.ndarray:
        """Normalised latents [1, C, T, h, w] -> uint8 frames [1 + 4 (T - 1), 8h, 8w, 3]."""
        self._mark_peak("denoising")
        latents = self.vae.denormalize(latents).astype(self.vae.dtype)
        if self.mesh is not None:
            latents = split_spatially(latents, self.mesh)
        with ticking(f"VAE decode ({latents.shape[2]} latent frames)"):  # one compiled pass: time elapsed, not steps
            frames = to_host(to_uint8_frames(self.vae.decode(latents)))
        self._mark_peak("decode")
        return frames

    def _mark_peak(self, stage: str) -> None:
        """Notes the device's peak memory by the end of `stage` for the summary (with a memory plan)."""
        if self.memory_notes is not None:
            self.memory_notes.peaks.mark(stage)

    # ------------------------------------------------------------------------------------------------ sizes

    def noise(self, key: jax.Array, latent_frames: int, height: int, width: int) -> jax.Array:
        """Standard normal latents [1, C, T, H/8, W/8] float32."""
        factor = self.vae.spatial_factor
        shape = (1, self.dit_config.in_channels, latent_frames, height // factor, width // factor)
        return jax.random.normal(key, shape, jnp.float32)


def _as_lora(spec: LoRASpec) -> LoRA:
    if isinstance(spec, LoRA):
        return spec
    path, multiplier = parse_lora_spec(spec) if isinstance(spec, str) else (Path(spec[0]), float(spec[1]))
    return load_lora(path, multiplier=multiplier)


def _bsa_request(bsa_config: str | Path | None) -> BSARequest:
    """The BSA a `bsa_config` file asks for every stage (`STAGE_DEFAULT` without a file)."""
    return STAGE_DEFAULT if bsa_config is None else read_bsa_config(bsa_config)
