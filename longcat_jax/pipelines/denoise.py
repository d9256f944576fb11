"""One denoising step as one compiled function, and the sampling loop around it.

A step runs the DiT (on the doubled batch [unconditional; conditional] when guided), combines the two branches
with CFG-zero*, and applies the Euler update, all inside one `jax.jit`. The DiT enters as (graphdef, state): the
graphdef (architecture, BSA setting, attached LoRAs) is static, the weights are an argument. The timestep, the two
sigmas and the guidance scale are traced float32 scalars, so a shape compiles once and every step and every run
with that shape reuses it; only a change of shape, of guidance on/off, of condition frames, or of the DiT's
graphdef (BSA on/off, LoRAs attached) compiles again.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longcat_jax.errors import InputError
from longcat_jax.models.dit.transformer import KVCache, LongCatDiT
from longcat_jax.nan_guard import check_finite
from longcat_jax.pipelines.calibration_record import record_dit_call
from longcat_jax.pipelines.guidance import cfg_zero_star, split_uncond_cond
from longcat_jax.pipelines.scheduler import Schedule, euler_step, frame_timesteps
from longcat_jax.progress import stepping
from longcat_jax.quantization.compile_options import quantized_jit
from longcat_jax.sharding.params import put


@dataclasses.dataclass(frozen=True)
class TextCondition:
    """The text the DiT attends to: [B, 1, L, C] embeddings and [B, L] masks, with the negative pair for CFG."""

    embeddings: jax.Array
    mask: jax.Array
    negative_embeddings: jax.Array | None = None
    negative_mask: jax.Array | None = None

    def for_step(self, guided: bool) -> tuple[jax.Array, jax.Array]:
        """(text, mask) as the step feeds them: [uncond; cond] stacked on the batch axis when guided."""
        if not guided:
            return self.embeddings, self.mask
        if self.negative_embeddings is None:
            raise InputError("guided sampling needs negative embeddings (encode the negative prompt, '' by default)")
        return self._stacked

    @functools.cached_property
    def _stacked(self) -> tuple[jax.Array, jax.Array]:
        # made once per condition, not once per denoising step
        return (
            jnp.concatenate([self.negative_embeddings, self.embeddings], axis=0),
            jnp.concatenate([self.negative_mask, self.mask], axis=0),
        )


def _denoise_update(
    dit,
    latents: jax.Array,
    text: jax.Array,
    text_mask: jax.Array,
    timestep: jax.Array,
    sigma: jax.Array,
    sigma_next: jax.Array,
    guidance_scale: jax.Array,
    kv_cache: KVCache | None,
    *,
    num_cond_latents: int,
    guided: bool,
) -> jax.Array:
    """latents [B, C, T, H, W] float32 -> latents after one Euler step of `dit` (see `Denoiser.step`)."""
    frames = latents.shape[2]
    model_input = jnp.concatenate([latents, latents], axis=0) if guided else latents  # [B or 2B, C, T, H, W]
    if kv_cache is None:
        # Condition frames are part of the input: timestep 0 there, and only the frames after them are stepped.
        timesteps = frame_timesteps(timestep, model_input.shape[0], frames, num_cond_latents)
        step_from = num_cond_latents
    else:
        # Condition frames live in the cache: every input frame is noisy.
        timesteps = frame_timesteps(timestep, model_input.shape[0], frames)
        step_from = 0
    prediction = dit(model_input, timesteps, text, text_mask, num_cond_latents=num_cond_latents, kv_cache=kv_cache)
    if guided:
        uncond, cond = split_uncond_cond(prediction)
        prediction = cfg_zero_star(cond, uncond, guidance_scale)
    return euler_step(latents, prediction, sigma, sigma_next, num_cond_latents=step_from)


@functools.partial(quantized_jit, static_argnames=("graphdef", "num_cond_latents", "guided"))
def _denoise_step(graphdef, state, *args, num_cond_latents: int, guided: bool) -> jax.Array:
    """`_denoise_update` of the DiT (graphdef, state), compiled as one function."""
    return _denoise_update(nnx.merge(graphdef, state), *args, num_cond_latents=num_cond_latents, guided=guided)


def _condition_cache(dit, cond_latents: jax.Array, *, text_length: int) -> KVCache:
    """`dit` once on clean condition latents (t = 0, no text): their per-block k, v."""
    batch, frames = cond_latents.shape[0], cond_latents.shape[2]
    text = jnp.zeros((batch, 1, text_length, dit.config.caption_channels), dit.dtype)
    timesteps = jnp.zeros((batch, frames), jnp.float32)
    _, cache = dit(cond_latents, timesteps, text, None, return_kv=True, skip_crs_attn=True)
    return cache


@functools.partial(quantized_jit, static_argnames=("graphdef", "text_length"))
def _condition_kv(graphdef, state, cond_latents: jax.Array, *, text_length: int) -> KVCache:
    """`_condition_cache` of the DiT (graphdef, state), compiled."""
    return _condition_cache(nnx.merge(graphdef, state), cond_latents, text_length=text_length)


class Denoiser:
    """A DiT split once into (graphdef, weights) for the compiled step; make a new one after changing the DiT
    (BSA, LoRAs), which is what changes its graphdef.

    streamed: a `longcat_jax.memory.StreamedDiT` of `dit` (its blocks' weights streamed from host memory); the step
    then runs it, its own compiled pieces joined by the step's few small operations, instead of one compiled step.
    """

    def __init__(self, dit: LongCatDiT, streamed=None):
        self.graphdef, self.state = nnx.split(dit)
        self.streamed = streamed
        plan = dit.context_parallel
        if streamed is not None:
            self._sharding = streamed.device_sharding
        elif plan is None:
            self._sharding = jax.tree.leaves(self.state)[0].sharding
        else:
            # Context parallel (longcat_jax.sharding): the weights, with any LoRA attached since, on the mesh;
            # inputs replicated over it.
            self.state = plan.place(self.state)
            self._sharding = plan.replicated

    def _committed(self, x: jax.Array) -> jax.Array:
        # Step outputs are committed to the weights' device(s); a first input that is not (fresh noise) would make
        # jit compile the same step a second time, and one committed elsewhere would not run at all.
        if isinstance(x, jax.Array) and x.committed and x.sharding.device_set == self._sharding.device_set:
            return x
        return put(x, self._sharding)

    def step(
        self,
        latents: jax.Array,
        text: TextCondition,
        timestep: float,
        sigma: float,
        sigma_next: float,
        *,
        guidance_scale: float = 1.0,
        guided: bool = False,
        num_cond_latents: int = 0,
        kv_cache: KVCache | None = None,
    ) -> jax.Array:
        """One step: latents [B, C, T, H, W] float32 at `sigma` -> at `sigma_next`.

        guided: run both CFG branches and combine them with CFG-zero* at `guidance_scale`.
        num_cond_latents: without `kv_cache`, the first frames of `latents` are clean conditions (timestep 0, not
        stepped); with `kv_cache` (from `condition_kv`), the number of cached condition frames, and `latents`
        holds only the frames to generate. The cache's batch is 1 (shared) or the DiT input's: B, or 2B when
        guided (`guided_kv_cache` makes that of a cache of B videos; `sample` does so once for all steps).
        """
        if kv_cache is not None:
            inputs = latents.shape[0] * (2 if guided else 1)
            if kv_cache[0].shape[1] not in (1, inputs):
                raise InputError(
                    f"kv_cache holds {kv_cache[0].shape[1]} videos, the step's DiT input {inputs}; pass the cache "
                    "through guided_kv_cache (guided steps run both branches of each video)"
                )
        embeddings, mask = text.for_step(guided)
        record_dit_call(latents, embeddings, mask, timestep, guided=guided,
                        conditioned=num_cond_latents > 0 or kv_cache is not None)
        args = (
            self._committed(latents),
            self._committed(embeddings),
            self._committed(mask),
            np.float32(timestep),
            np.float32(sigma),
            np.float32(sigma_next),
            np.float32(guidance_scale),
            kv_cache,
        )
        if self.streamed is not None:
            return _denoise_update(self.streamed, *args, num_cond_latents=num_cond_latents, guided=guided)
        return _denoise_step(self.graphdef, self.state, *args, num_cond_latents=num_cond_latents, guided=guided)

    def condition_kv(self, cond_latents: jax.Array, text_length: int) -> KVCache:
        """KV cache of clean condition latents [B, C, Tc, H, W] (video continuation: computed once per video)."""
        if self.streamed is not None:
            return _condition_cache(self.streamed, self._committed(cond_latents), text_length=text_length)
        return _condition_kv(self.graphdef, self.state, self._committed(cond_latents), text_length=text_length)


def guided_kv_cache(kv_cache: KVCache | None, batch: int, guided: bool) -> KVCache | None:
    """The condition cache of `batch` videos for steps whose DiT input holds both guidance branches of each
    (unconditional first, as the step stacks them); a shared cache (batch 1) or an unguided one as it is."""
    if kv_cache is None or not guided or kv_cache[0].shape[1] != batch or batch == 1:
        return kv_cache
    return tuple(jnp.concatenate([c, c], axis=1) for c in kv_cache)


def sample(
    denoiser: Denoiser,
    latents: jax.Array,
    schedule: Schedule,
    text: TextCondition,
    *,
    guidance_scale: float = 1.0,
    guided: bool = False,
    num_cond_latents: int = 0,
    kv_cache: KVCache | None = None,
    desc: str = "Denoising",
    step_times: list[float] | None = None,
) -> jax.Array:
    """Runs every step of `schedule` from `latents`. Each call is a `longcat_jax.progress.stepping` loop named
    `desc`: a progress bar, and a report of each step (`desc`, step i of n) to the thread's `progress.on_steps`
    listeners, which may raise to stop here. Appends each step's wall time (the first includes compilation) to
    `step_times` when given. The result is checked for NaN and Inf (one reduction; `NonFiniteError` names the stage
    by `desc`), so a numerical failure never decodes to a black video."""
    timesteps = np.asarray(schedule.timesteps, np.float32)
    sigmas = np.asarray(schedule.sigmas, np.float32)
    kv_cache = guided_kv_cache(kv_cache, latents.shape[0], guided)  # once, not in every step
    with stepping(len(timesteps), desc) as steps:
        for index in range(len(timesteps)):
            start = time.perf_counter()
            latents = denoiser.step(
                latents,
                text,
                timesteps[index],
                sigmas[index],
                sigmas[index + 1],
                guidance_scale=guidance_scale,
                guided=guided,
                num_cond_latents=num_cond_latents,
                kv_cache=kv_cache,
            )
            if step_times is not None or steps.watched:  # a step's time or report counts it finished
                latents.block_until_ready()
            if step_times is not None:
                step_times.append(time.perf_counter() - start)
            steps.done()
    check_finite(latents, desc)
    return latents
