"""The JSON config of `python -m longcat_jax.train`: every key documented, unknown keys and bad values refused.

A config is one JSON object with a few top-level keys and one object per section; every key has a default except
`data.folder`. `configs/train/example.json` lists them all, and the README's "Fine-tuning" section has the table.
Keys starting with "_" are comments and ignored (JSON has no comments); any other unknown key, and every bad
value, is refused with a ConfigError naming the file and the dotted key (`optimizer.learning_rate`), before any
model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kernels import BSAParams
from kernels.pallas_mosaic import BLOCK as MOSAIC_BLOCK
from kernels.sparse_attention import BACKWARD_KERNELS as BSA_BACKWARDS
from longcat_jax.bsa_config import parse_bsa_config
from longcat_jax.errors import ConfigError
from longcat_jax.json_io import read_json_object
from longcat_jax.pipelines.buckets import RESOLUTIONS
from longcat_jax.quantization.modes import MODES as QUANTIZE_MODES
from longcat_jax.quantization.modes import uses_fp8_attention

TASKS = ("t2v", "i2v", "continuation")
DTYPES = ("bfloat16", "float32")
SCHEDULES = ("constant", "linear", "cosine")
SIGMA_SAMPLINGS = ("uniform", "logit_normal")
BSA_BACKENDS = ("auto", "reference", "pallas", "pallas_interpret")
# Rematerialisation of the DiT blocks in the backward pass (`longcat_jax.training.remat` says what each keeps).
REMAT_MODES = ("block", "block_keep_attention", "block_and_sublayers", "none")
LEGACY_REMAT = {True: "block", False: "none"}  # the boolean of earlier configs
MAX_SEED = 2**63 - 1  # seeds become longcat_jax.seeds.key_from_seed(seed) (every bit counted); kept signed for JSON

# LoRA targets: the original's module names inside a DiT block (what its LoRA files are keyed by), and groups.
BLOCK_LINEARS = (
    "attn.qkv",
    "attn.proj",
    "cross_attn.q_linear",
    "cross_attn.kv_linear",
    "cross_attn.proj",
    "ffn.w1",
    "ffn.w2",
    "ffn.w3",
    "adaLN_modulation.1",
)
TARGET_GROUPS = {
    "attention": BLOCK_LINEARS[:5],
    "ffn": BLOCK_LINEARS[5:8],
    "adaln": BLOCK_LINEARS[8:],
    "all": BLOCK_LINEARS,
}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the clips are, the size they are trained at and where their encodings are cached."""

    folder: Path
    cache_dir: Path | None = None  # None: <output_dir>/cache
    resolution: str = "480p"
    height: int | None = None
    width: int | None = None
    num_frames: int = 93
    fps: float | None = 15.0


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """What is learned: t2v, or generation conditioned on clean leading frames (i2v: 1, continuation: more)."""

    name: str = "t2v"
    num_cond_frames: int = 13  # continuation only: video frames, 1 + 4k

    def cond_video_frames(self) -> int:
        """Video frames given clean: 0 (t2v), 1 (i2v) or `num_cond_frames` (continuation)."""
        return {"t2v": 0, "i2v": 1}.get(self.name, self.num_cond_frames)


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """LoRA rank, alpha (the update is scaled by alpha / rank) and the block Linears it adapts."""

    rank: int = 128
    alpha: float = 64.0
    targets: tuple[str, ...] = ("attention", "ffn")

    @property
    def modules(self) -> tuple[str, ...]:
        """The targets with groups expanded, in block order, each once."""
        wanted = {name for target in self.targets for name in TARGET_GROUPS.get(target, (target,))}
        return tuple(name for name in BLOCK_LINEARS if name in wanted)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW on the LoRA factors, with a learning-rate schedule and global-norm gradient clipping."""

    learning_rate: float = 1e-4
    schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Steps, batch, accumulation, seed, rematerialisation and the sigma distribution of the objective."""

    steps: int = 1000
    batch_size: int = 1
    grad_accumulation: int = 1
    seed: int = 42
    remat: str = "block"  # one of REMAT_MODES; "block_keep_attention" is faster, "block_and_sublayers" smaller
    sigma_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    sigma_shift: float = 1.0
    log_every: int = 10


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """How often the LoRA, optimiser state and data position are saved, and how many checkpoints are kept."""

    every: int = 500
    keep: int = 3


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """Devices of the data-parallel mesh (null: all visible) and whether the frozen weights are split (FSDP)."""

    devices: int | None = 1
    fsdp: bool = False


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """A text-to-video sample with the LoRA being trained, every `every` optimiser steps (0: never), from a fixed
    prompt and seed, so the samples of a run show what the steps changed.

    None: the generation default of the model (steps, guidance, negative prompt), or the size and frame count of
    the training clips (their first bucket).
    """

    every: int = 0
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int = 42
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None

    @property
    def enabled(self) -> bool:
        return self.every > 0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A validated training config (see `configs/train/example.json`)."""

    data: DataConfig
    model_path: Path | None = None  # None: the built-in tiny model with random weights
    dtype: str = "bfloat16"
    quantize: str = "none"  # the frozen base's block Linears: none, fp8, fp8-weight-only or int8
    output_dir: Path = Path("outputs/train")
    task: TaskConfig = TaskConfig()
    lora: LoRAConfig = LoRAConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    training: TrainingConfig = TrainingConfig()
    bsa: BSAParams | None = None  # None: dense self attention
    bsa_backend: str = "auto"
    bsa_backward: str = "auto"  # the Pallas backends' backward kernels: auto (mosaic on Hopper, else triton), triton, mosaic
    checkpoint: CheckpointConfig = CheckpointConfig()
    parallel: ParallelConfig = ParallelConfig()
    sample: SampleConfig = SampleConfig()

    @property
    def cache_dir(self) -> Path:
        return self.data.cache_dir or self.output_dir / "cache"

    @property
    def builtin(self) -> bool:
        return self.model_path is None


# ----------------------------------------------------------------------------------------------------- parsing


class _Reader:
    """Typed access to one JSON object (a section), every error naming `source` and the dotted key."""

    def __init__(self, raw: Any, section: str, source: str, known: tuple[str, ...]):
        self.source = source
        self.section = section
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: {repr(section) if section else 'the config'} must be a JSON object, got {raw!r}")
        unknown = sorted(key for key in set(raw) - set(known) if not str(key).startswith("_"))
        if unknown:
            raise ConfigError(f"{source}: unknown key {self._key(unknown[0])!r}; known keys here: {list(known)}")
        self.raw = raw

    def _key(self, key: str) -> str:
        return f"{self.section}.{key}" if self.section else key

    def fail(self, key: str, expected: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self._key(key)!r} must be {expected}, got {self.raw[key]!r}")

    def has(self, key: str) -> bool:
        return key in self.raw

    def integer(self, key: str, default, *, minimum: int = 1, maximum: int | None = None, nullable: bool = False):
        """The key's int (`default` when absent; None when null and `nullable`)."""
        if key not in self.raw:
            return default
        if nullable and self.raw[key] is None:
            return None
        value = self.raw[key]
        if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
                or (maximum is not None and value > maximum)):
            bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
            raise self.fail(key, f"an integer {bounds}" + (" or null" if nullable else ""))
        return value

    def number(self, key: str, default, *, minimum: float | None = None, exclusive: bool = False,
               maximum: float | None = None, nullable: bool = False):
        """The key's number as float (`default` when absent; None when null and `nullable`)."""
        if key not in self.raw:
            return default
        if nullable and self.raw[key] is None:
            return None
        value = self.raw[key]
        bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        if not bad and minimum is not None:
            bad = value <= minimum if exclusive else value < minimum
        if not bad and maximum is not None:
            bad = value > maximum
        if bad:
            bounds = "" if minimum is None else f" {'>' if exclusive else '>='} {minimum}"
            bounds += "" if maximum is None else f" and <= {maximum}"
            raise self.fail(key, f"a finite number{bounds}" + (" or null" if nullable else ""))
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        if key not in self.raw:
            return default
        if not isinstance(self.raw[key], bool):
            raise self.fail(key, "true or false")
        return self.raw[key]

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        if key not in self.raw:
            return default
        if self.raw[key] not in choices:
            raise self.fail(key, f"one of {list(choices)}")
        return self.raw[key]

    def text(self, key: str, default: str | None, *, nullable: bool = True) -> str | None:
        """The key's string (`default` when absent; None when null and `nullable`)."""
        if key not in self.raw:
            return default
        if nullable and self.raw[key] is None:
            return None
        if not isinstance(self.raw[key], str):
            raise self.fail(key, "a string" + (" or null" if nullable else ""))
        return self.raw[key]

    def path(self, key: str, default: Path | None, *, required: bool = False) -> Path | None:
        if key not in self.raw or self.raw[key] is None:
            if required:
                raise ConfigError(f"{self.source}: missing key {self._key(key)!r} (a folder path)")
            return default
        if not isinstance(self.raw[key], str) or not self.raw[key]:
            raise self.fail(key, "a path string")
        return Path(self.raw[key]).expanduser()


def _section(raw: Mapping, name: str, source: str, cls) -> _Reader:
    known = tuple(f.name for f in dataclasses.fields(cls))
    return _Reader(raw.get(name, {}), name, source, known)


def _frame_size(r: _Reader, default_meaning: str) -> tuple[int | None, int | None]:
    """(height, width) of a section: both multiples of 16, or both null (`default_meaning`)."""
    height = r.integer("height", None, nullable=True)
    width = r.integer("width", None, nullable=True)
    if (height is None) != (width is None):
        raise ConfigError(f"{r.source}: give both '{r.section}.height' and '{r.section}.width' (a fixed size) or "
                          f"neither ({default_meaning})")
    for key, value in (("height", height), ("width", width)):
        if value is not None and value % 16:
            raise r.fail(key, f"a multiple of 16 (VAE 8x times patch 2), e.g. {max(16, round(value / 16) * 16)}")
    return height, width


def _frame_count(r: _Reader, default: int | None) -> int | None:
    """The section's `num_frames`: 1 + 4k (or `default` when absent; null when the default is None)."""
    num_frames = r.integer("num_frames", default, nullable=default is None)
    if num_frames is not None and num_frames % 4 != 1:
        raise r.fail("num_frames", f"1 + 4k (the VAE compresses time 4x after the first frame), e.g. "
                                   f"{num_frames // 4 * 4 + 1}")
    return num_frames


def _data(raw: Mapping, source: str) -> DataConfig:
    r = _section(raw, "data", source, DataConfig)
    height, width = _frame_size(r, "buckets")
    num_frames = _frame_count(r, DataConfig.num_frames)
    return DataConfig(
        folder=r.path("folder", None, required=True),
        cache_dir=r.path("cache_dir", None),
        resolution=r.choice("resolution", DataConfig.resolution, RESOLUTIONS),
        height=height,
        width=width,
        num_frames=num_frames,
        fps=r.number("fps", DataConfig.fps, minimum=0.0, exclusive=True, nullable=True),
    )


def _task(raw: Mapping, source: str, data: DataConfig) -> TaskConfig:
    r = _section(raw, "task", source, TaskConfig)
    name = r.choice("name", TaskConfig.name, TASKS)
    cond = r.integer("num_cond_frames", TaskConfig.num_cond_frames)
    if r.has("num_cond_frames") and name != "continuation":
        raise ConfigError(f"{source}: 'task.num_cond_frames' applies to task 'continuation' only (i2v conditions on "
                          f"1 frame, t2v on none); remove it or set 'task.name' to 'continuation'")
    if name == "continuation":
        if cond % 4 != 1:
            raise r.fail("num_cond_frames", "1 + 4k video frames (whole latent frames), e.g. 13")
        if cond >= data.num_frames:
            raise ConfigError(f"{source}: 'task.num_cond_frames' {cond} leaves nothing to generate in "
                              f"'data.num_frames' {data.num_frames}; use fewer condition frames or longer clips")
    if name == "i2v" and data.num_frames < 5:
        raise ConfigError(f"{source}: task 'i2v' needs 'data.num_frames' >= 5 (one frame is the condition)")
    return TaskConfig(name=name, num_cond_frames=cond)


def _lora(raw: Mapping, source: str) -> LoRAConfig:
    r = _section(raw, "lora", source, LoRAConfig)
    targets = r.raw.get("targets", list(LoRAConfig.targets))
    allowed = (*TARGET_GROUPS, *BLOCK_LINEARS)
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise ConfigError(f"{source}: 'lora.targets' must be a non-empty list of names from {list(allowed)}, "
                          f"got {targets!r}")
    for target in targets:
        if target not in allowed:
            raise ConfigError(f"{source}: 'lora.targets' has unknown module {target!r}; use group names "
                              f"{list(TARGET_GROUPS)} or block Linears {list(BLOCK_LINEARS)} (the original's names)")
    return LoRAConfig(
        rank=r.integer("rank", LoRAConfig.rank),
        alpha=r.number("alpha", LoRAConfig.alpha, minimum=0.0, exclusive=True),
        targets=tuple(targets),
    )


def _optimizer(raw: Mapping, source: str, steps: int) -> OptimizerConfig:
    r = _section(raw, "optimizer", source, OptimizerConfig)
    warmup = r.integer("warmup_steps", OptimizerConfig.warmup_steps, minimum=0)
    if warmup >= steps and warmup > 0:
        raise r.fail("warmup_steps", f"fewer than 'training.steps' ({steps})")
    return OptimizerConfig(
        learning_rate=r.number("learning_rate", OptimizerConfig.learning_rate, minimum=0.0, exclusive=True),
        schedule=r.choice("schedule", OptimizerConfig.schedule, SCHEDULES),
        warmup_steps=warmup,
        weight_decay=r.number("weight_decay", OptimizerConfig.weight_decay, minimum=0.0),
        beta1=r.number("beta1", OptimizerConfig.beta1, minimum=0.0, maximum=0.999999),
        beta2=r.number("beta2", OptimizerConfig.beta2, minimum=0.0, maximum=0.999999),
        eps=r.number("eps", OptimizerConfig.eps, minimum=0.0, exclusive=True),
        max_grad_norm=r.number("max_grad_norm", OptimizerConfig.max_grad_norm, minimum=0.0, exclusive=True,
                               nullable=True),
    )


def _training(raw: Mapping, source: str) -> TrainingConfig:
    r = _section(raw, "training", source, TrainingConfig)
    return TrainingConfig(
        steps=r.integer("steps", TrainingConfig.steps),
        batch_size=r.integer("batch_size", TrainingConfig.batch_size),
        grad_accumulation=r.integer("grad_accumulation", TrainingConfig.grad_accumulation),
        seed=r.integer("seed", TrainingConfig.seed, minimum=0, maximum=MAX_SEED),
        remat=_remat(r),
        sigma_sampling=r.choice("sigma_sampling", TrainingConfig.sigma_sampling, SIGMA_SAMPLINGS),
        logit_mean=r.number("logit_mean", TrainingConfig.logit_mean),
        logit_std=r.number("logit_std", TrainingConfig.logit_std, minimum=0.0, exclusive=True),
        sigma_shift=r.number("sigma_shift", TrainingConfig.sigma_shift, minimum=0.0, exclusive=True),
        log_every=r.integer("log_every", TrainingConfig.log_every),
    )


def _remat(r: _Reader) -> str:
    """`training.remat`: one of REMAT_MODES, or the true/false of earlier configs (true: the default mode)."""
    value = r.raw.get("remat", TrainingConfig.remat)
    if isinstance(value, bool):
        return LEGACY_REMAT[value]
    return r.choice("remat", TrainingConfig.remat, REMAT_MODES)


def _bsa(raw: Mapping, source: str, dtype: str) -> tuple[BSAParams | None, str, str]:
    """(params, backend, backward) of the `bsa` section: a configs/bsa/*.json object plus `backend` (the kernels'
    backend) and `backward` (the Pallas backward kernels: the Mosaic GPU ones take bf16 and 64-token chunks)."""
    section = raw.get("bsa", {"enable_bsa": False})
    if not isinstance(section, Mapping):
        raise ConfigError(f"{source}: 'bsa' must be a JSON object like configs/bsa/*.json, got {section!r}")
    r = _Reader({k: v for k, v in section.items() if k in ("backend", "backward")}, "bsa", source, ("backend", "backward"))
    backend = r.choice("backend", TrainConfig.bsa_backend, BSA_BACKENDS)
    backward = r.choice("backward", TrainConfig.bsa_backward, BSA_BACKWARDS)
    pair = {k: v for k, v in section.items() if k not in ("backend", "backward") and not k.startswith("_")}
    params = parse_bsa_config(pair, source=f"{source}: 'bsa'")
    mosaic_fits = params is None or (dtype == "bfloat16" and params.chunk_size_q == params.chunk_size_k == MOSAIC_BLOCK)
    if backward == "mosaic" and not mosaic_fits:
        raise r.fail("backward", "'auto' or 'triton' unless dtype is bfloat16 and both chunk shapes hold 64 tokens (e.g. "
                                 "[4, 4, 4]), what the Mosaic GPU backward takes")
    return params, backend, backward


def _checkpoint(raw: Mapping, source: str) -> CheckpointConfig:
    r = _section(raw, "checkpoint", source, CheckpointConfig)
    return CheckpointConfig(every=r.integer("every", CheckpointConfig.every),
                            keep=r.integer("keep", CheckpointConfig.keep))


def _parallel(raw: Mapping, source: str, training: TrainingConfig) -> ParallelConfig:
    r = _section(raw, "parallel", source, ParallelConfig)
    devices = r.integer("devices", ParallelConfig.devices, nullable=True)
    if devices is not None and training.batch_size % devices:
        raise ConfigError(f"{source}: 'training.batch_size' {training.batch_size} must be a multiple of "
                          f"'parallel.devices' {devices} (each device trains on its share of every batch)")
    return ParallelConfig(devices=devices, fsdp=r.boolean("fsdp", ParallelConfig.fsdp))


def _sample(raw: Mapping, source: str, parallel: ParallelConfig) -> SampleConfig:
    r = _section(raw, "sample", source, SampleConfig)
    every = r.integer("every", SampleConfig.every, minimum=0)
    prompt = r.text("prompt", None)
    if every and not (prompt or "").strip():
        raise ConfigError(f"{source}: 'sample.every' {every} needs 'sample.prompt' (the fixed prompt of the samples); "
                          "give one, or set 'sample.every' to 0 (no samples)")
    if every and parallel.devices != 1:
        raise ConfigError(f"{source}: 'sample.every' samples on one device, but 'parallel.devices' is "
                          f"{parallel.devices}; set 'sample.every' to 0 for a multi-device run and generate with "
                          "the saved lora/step_<6-digit step>.safetensors (e.g. step_000200) instead")
    height, width = _frame_size(r, "the training clips' size")
    return SampleConfig(
        every=every,
        prompt=prompt,
        negative_prompt=r.text("negative_prompt", None),
        seed=r.integer("seed", SampleConfig.seed, minimum=0, maximum=MAX_SEED),
        num_inference_steps=r.integer("num_inference_steps", None, nullable=True),
        guidance_scale=r.number("guidance_scale", None, minimum=1.0, nullable=True),
        height=height,
        width=width,
        num_frames=_frame_count(r, None),
    )


TOP_LEVEL = ("model_path", "dtype", "quantize", "output_dir", "data", "task", "lora", "optimizer", "training", "bsa",
             "checkpoint", "parallel", "sample")


def parse_train_config(raw: Mapping[str, Any], *, source: str = "train config") -> TrainConfig:
    """Validates a config dict. Paths are kept as written: relative ones are relative to the working directory."""
    top = _Reader(raw, "", source, TOP_LEVEL)
    data = _data(raw, source)
    training = _training(raw, source)
    dtype = top.choice("dtype", TrainConfig.dtype, DTYPES)
    bsa, backend, backward = _bsa(raw, source, dtype)
    parallel = _parallel(raw, source, training)
    quantize = top.choice("quantize", TrainConfig.quantize, QUANTIZE_MODES)
    if uses_fp8_attention(quantize):
        raise ConfigError(f"{source}: 'quantize' {quantize!r} has no backward (cuDNN's FP8 attention is inference "
                          "only); train on an FP8 base with 'fp8' (FP8 GEMMs, bf16 attention)")
    return TrainConfig(
        data=data,
        model_path=top.path("model_path", None),
        dtype=dtype,
        quantize=quantize,
        output_dir=top.path("output_dir", TrainConfig.output_dir),
        task=_task(raw, source, data),
        lora=_lora(raw, source),
        optimizer=_optimizer(raw, source, training.steps),
        training=training,
        bsa=bsa,
        bsa_backend=backend,
        bsa_backward=backward,
        checkpoint=_checkpoint(raw, source),
        parallel=parallel,
        sample=_sample(raw, source, parallel),
    )


def load_train_config(path: str | Path) -> TrainConfig:
    """Reads and validates a training config file."""
    raw = read_json_object(path, "train config", hint="see configs/train/example.json")
    return parse_train_config(raw, source=str(path))
