"""The training run: checks, model set-up, the step loop with its progress bar, checkpoints and the LoRA files.

Everything that can be wrong with the data, config or output folder is refused before the DiT is loaded: a missing
or stale cache (encoded for other settings, or for clips the data folder no longer holds as they were), BSA chunks
that do not tile a bucket (or the sample video's size), a BSA backend the platform cannot run or whose Pallas
kernels cannot take the DiT's head size or the chunks, a `quantize` mode the devices cannot run, checkpoints in the
output folder without `--resume` (or none with it, or one past `training.steps`). Then: the sample video's prompt
encoded (with `sample.every`), the base DiT (frozen; its block Linears quantized with `quantize`), a fresh float32
LoRA on the targets, per-block rematerialisation, placement on one device or the mesh, AdamW state; with `--resume`
the newest checkpoint's factors, optimiser state and step.
Each step logs loss, learning rate, gradient norm and time (bar, log, CSV).

Outputs in `output_dir`: `checkpoints/<step>/` (Orbax, the last `checkpoint.keep`), `lora/step_<N>.safetensors`
(the step zero-padded to 6 digits: `step_000200.safetensors`) at every checkpoint and `lora.safetensors` at the
end, both in the original LoRA format (`--lora` loads them), `metrics.csv` and TensorBoard files,
`samples/step_<N>.mp4` (`step_000200.mp4`) every `sample.every` steps. Ctrl-C lets the running
step finish, saves a checkpoint and stops (a second Ctrl-C stops at once); `--resume` continues.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from pathlib import Path

import jax
from flax import nnx
from tqdm.auto import tqdm

from longcat_jax.errors import CheckpointError, InputError
from longcat_jax.memory.device import device_memory
from longcat_jax.models.dit import DiTConfig, LongCatDiT
from longcat_jax.seeds import key_from_seed
from longcat_jax.training.batches import BatchLoader, BatchPlan
from longcat_jax.training.cache import CacheManifest, require_manifest
from longcat_jax.training.checkpoints import ORDER_KEYS, TrainCheckpoints
from longcat_jax.training.config import TrainConfig
from longcat_jax.training.lora_file import save_lora_file
from longcat_jax.training.models import (
    base_dit_config,
    check_model_path,
    load_base_dit,
    model_id,
    model_sizes,
    prepare_base_dit,
)
from longcat_jax.training.objective import SigmaSampling
from longcat_jax.training.optimizer import learning_rate_schedule
from longcat_jax.training.placement import Placement, training_mesh
from longcat_jax.training.prepare import cache_fingerprint
from longcat_jax.training.remat import rematerialize_blocks
from longcat_jax.training.remat_memory import check_remat_fits, max_clip_tokens
from longcat_jax.training.run_log import MetricsLog
from longcat_jax.training.sample_video import SampleVideos
from longcat_jax.training.shapes import check_bsa_backend, check_bsa_tiling, num_cond_latents
from longcat_jax.training.step import StepSpec, train_step
from longcat_jax.training.trainable_lora import (
    LoRATarget,
    attach_trainable_lora,
    split_trainable,
    trained_lora,
)

logger = logging.getLogger(__name__)

FINAL_LORA_NAME = "lora.safetensors"
LORA_DIR = "lora"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a run did: the steps it ran (from `start_step` to `final_step`), their losses and times, the LoRA."""

    output_dir: Path
    start_step: int
    final_step: int
    losses: list[float]
    step_seconds: list[float]
    lora_path: Path | None


class _StopRequest:
    """Turns Ctrl-C into a request the loop honours between steps, so the checkpoint it saves is consistent; a
    second Ctrl-C raises KeyboardInterrupt at once. Only the main thread can take signals; elsewhere it is inert."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again to stop at once)")

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _run_meta(config: TrainConfig, manifest: CacheManifest, cond_latents: int) -> dict:
    return {
        "model": model_id(config),
        "dtype": config.dtype,
        "quantize": config.quantize,
        "task": {"name": config.task.name, "num_cond_latents": cond_latents},
        "lora": {"rank": config.lora.rank, "alpha": config.lora.alpha, "modules": list(config.lora.modules)},
        "clips_digest": manifest.clips_digest(),
        "training": {key: getattr(config.training, key) for key in ORDER_KEYS + ("steps",)},
        "schedule": config.optimizer.schedule,
    }


def step_spec(config: TrainConfig, cond_latents: int) -> StepSpec:
    """The static part of this config's training step."""
    training = config.training
    sigma = SigmaSampling(training.sigma_sampling, training.logit_mean, training.logit_std, training.sigma_shift)
    return StepSpec(config.optimizer, training.steps, sigma, cond_latents)


def _check_run(config: TrainConfig, config_source: str, resume: bool,
               dit: LongCatDiT | None) -> tuple[CacheManifest, int, int | None, DiTConfig]:
    """The cheap checks; returns (manifest, condition latents, step to resume from, config of the DiT trained:
    `dit`'s, or the one `model_path` holds, read without its weights)."""
    check_model_path(config)
    dit_config = dit.config if dit is not None else base_dit_config(config)
    check_bsa_backend(config.bsa, config.bsa_backend, dit_config.head_dim)
    manifest = require_manifest(config.cache_dir, cache_fingerprint(config), config_source, config.data.folder)
    cond = num_cond_latents(config)
    check_bsa_tiling(config.bsa, [clip.bucket for clip in manifest.clips], cond)
    latest = TrainCheckpoints.peek_latest_step(config.output_dir)
    if resume and latest is None:
        raise InputError(f"nothing to resume: {config.output_dir} has no checkpoint; run without --resume to start")
    if not resume and latest is not None:
        raise InputError(f"{config.output_dir} already holds checkpoints up to step {latest}; pass --resume to "
                         "continue that run, or set 'output_dir' to a new folder to start another")
    if resume and latest > config.training.steps:
        # Resuming would relabel the later step's factors as the final LoRA of step 'training.steps'.
        raise CheckpointError(f"{config.output_dir} holds checkpoints up to step {latest}, past 'training.steps' "
                              f"{config.training.steps}; set 'training.steps' to {latest} or more to resume that "
                              "run, or set 'output_dir' to a new folder to train a shorter one")
    if resume and latest == config.training.steps:
        logger.info("Checkpoint %d already reaches 'training.steps' %d: nothing left to train; raise "
                    "'training.steps' to train on", latest, config.training.steps)
    buckets = sorted({clip.bucket for clip in manifest.clips})
    logger.info("Training on %d clips in %d bucket(s) (latent T x h x w: %s); %d entries skipped at prepare",
                len(manifest.clips), len(buckets), ", ".join("x".join(map(str, b)) for b in buckets),
                len(manifest.skipped))
    return manifest, cond, latest, dit_config


def _save_lora(model: LongCatDiT, targets: list[LoRATarget], config: TrainConfig, path: Path, step: int) -> Path:
    lora = trained_lora(model, targets, config.lora, path.stem)
    if jax.process_index() == 0:
        save_lora_file(path, lora, targets, metadata={"rank": str(config.lora.rank), "alpha": f"{config.lora.alpha:g}",
                                                      "step": str(step), "model": model_id(config)})
    return path


def run_training(config: TrainConfig, *, resume: bool = False, config_source: str = "train.json",
                 dit: LongCatDiT | None = None, until_step: int | None = None) -> TrainResult:
    """Trains the LoRA `config` describes (see the module docstring) and returns what the run did.

    dit: the base model to adapt instead of loading `model_path` (tests pass small ones; it is modified: quantized
    and its BSA set as the config says).
    until_step: stop (with a checkpoint) after this many optimiser steps, before `training.steps`; `--resume`
    continues later, e.g. across the time limit of a cluster job.
    """
    manifest, cond, latest, dit_config = _check_run(config, config_source, resume, dit)
    training = config.training
    start = latest or 0
    end = min(training.steps, until_step) if until_step is not None else training.steps
    mesh = training_mesh(config)
    placement = Placement(mesh, config.parallel.fsdp)
    check_remat_fits(config, dit_config, max_clip_tokens(clip.bucket for clip in manifest.clips), device_memory(),
                     devices=1 if mesh is None else mesh.size)
    samples = None
    if config.sample.enabled:  # before the DiT loads: the text encoder is released again right after
        bucket = min(clip.bucket for clip in manifest.clips)
        samples = SampleVideos.create(config, dit_config, bucket)

    model = prepare_base_dit(dit, config) if dit is not None else load_base_dit(config)
    targets = attach_trainable_lora(model, config.lora, seed=training.seed)
    rematerialize_blocks(model, training.remat)
    model.set_row_kernels(mesh is None)  # a batch split over devices: XLA's forms, which XLA can split
    graphdef, factors, frozen = split_trainable(model)
    factors, frozen = placement.replicated(factors), placement.frozen(frozen)
    nnx.update(model, factors, frozen)  # the model holds the placed arrays only (no second copy of the weights)
    spec = step_spec(config, cond)
    opt_state = placement.replicated(spec.make_optimizer().init(factors))
    meta = _run_meta(config, manifest, cond)
    checkpoints = TrainCheckpoints(config.output_dir, config.checkpoint.keep)
    if resume:
        factors, opt_state = checkpoints.restore(start, factors, opt_state, meta)
        logger.info("Resumed from checkpoint %d of %s", start, checkpoints.directory)

    sizes = model_sizes(config)
    plan = BatchPlan(manifest.clips, training.batch_size * training.grad_accumulation, training.seed)
    loader = BatchLoader(plan, config.cache_dir, manifest.clips, training.grad_accumulation, sizes.text_length)
    schedule = learning_rate_schedule(config.optimizer, training.steps)
    metrics_log = MetricsLog(config.output_dir, start)
    base_key = key_from_seed(training.seed)
    losses: list[float] = []
    seconds: list[float] = []
    done = start
    try:
        with _StopRequest() as stop, tqdm(total=training.steps, initial=start, desc="Training", unit="step") as bar:
            for step in range(start, end):
                began = time.perf_counter()
                batch = placement.batch(loader.get(step, prefetch_next=step + 1 < end))
                factors, opt_state, metrics = train_step(graphdef, spec, factors, opt_state, frozen, batch,
                                                         jax.random.fold_in(base_key, step))
                loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
                done = step + 1
                seconds.append(time.perf_counter() - began)
                losses.append(loss)
                rate = float(schedule(step))
                metrics_log.write(done, loss, rate, grad_norm, seconds[-1])
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{rate:.2e}")
                bar.update(1)
                if done % training.log_every == 0:
                    logger.info("step %d/%d loss %.5f lr %.3g grad_norm %.3g %.3f s", done, training.steps, loss,
                                rate, grad_norm, seconds[-1])
                checkpoint_due = done % config.checkpoint.every == 0 or done == end or stop.requested
                sample_due = samples is not None and done % config.sample.every == 0
                if checkpoint_due or sample_due:
                    nnx.update(model, factors)  # the model holds this step's factors
                if checkpoint_due:
                    checkpoints.save(done, factors, opt_state, meta)
                    _save_lora(model, targets, config, config.output_dir / LORA_DIR / f"step_{done:06d}.safetensors",
                               done)
                if sample_due:
                    samples.write(model, done)
                if stop.requested:
                    logger.warning("Stopped after step %d; continue with --resume", done)
                    raise KeyboardInterrupt
    finally:
        loader.close()
        metrics_log.close()
        checkpoints.close()
    lora_path = None
    if end == training.steps:
        nnx.update(model, factors)
        lora_path = _save_lora(model, targets, config, config.output_dir / FINAL_LORA_NAME, end)
        logger.info("Trained LoRA written to %s (load it with --lora %s)", lora_path, lora_path)
    return TrainResult(config.output_dir, start, done, losses, seconds, lora_path)
