"""Flow-matching Euler schedule of LongCat-Video: sigma tables, the checkpoint's scheduler config, the Euler update.

The original pipeline always hands the scheduler an explicit sigma table (plain `linspace(1, 0.001, steps)` or the
distill table), the scheduler applies its `shift` (1.0 in the configs LongCat ships, so a no-op) and appends a final
0. Timesteps fed to the DiT are `sigmas[:-1] * 1000`. Each step moves the latents along the negated model output:
`x_next = x + (sigma_next - sigma) * (-model_output)`.

Tables are built once on the host in float32 (their length is a static shape); `euler_step` and the helpers below
are pure `jnp` so they can sit inside one jitted denoising step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from longcat_jax.errors import ConfigError
from longcat_jax.json_io import read_json_object

NUM_TRAIN_TIMESTEPS = 1000
# The distilled model (cfg_step_lora) was trained on 50 evenly spaced timesteps: 20, 40, ..., 1000.
DISTILL_TRAIN_STEPS = 50
# Video continuation's "enhance high frequency" tail: every step at or below t=500 is replaced by 10 even steps.
UNIFORM_TAIL_START = 500.0
UNIFORM_TAIL_STEPS = 10

_IGNORED_KEYS = frozenset({"_class_name", "_diffusers_version", "_use_default_values"})
# Only read by diffusers when `use_dynamic_shifting` is on, which LongCat never uses (it would need `mu`).
_DYNAMIC_SHIFT_KEYS = frozenset(
    {"base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len", "time_shift_type"}
)
# Switches LongCat ships off; each would change the sampler in ways this port does not implement.
_MUST_BE_OFF = (
    "use_dynamic_shifting",
    "invert_sigmas",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "stochastic_sampling",
)


@dataclass(frozen=True)
class SchedulerConfig:
    """The parts of diffusers' `FlowMatchEulerDiscreteScheduler` config that shape LongCat's sigma tables."""

    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
    shift: float = 1.0
    shift_terminal: float | None = None

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], *, source: str = "scheduler config") -> SchedulerConfig:
        """Validates a `scheduler_config.json` dict; unknown keys and unsupported switches raise ConfigError."""
        known = {"num_train_timesteps", "shift", "shift_terminal", *_MUST_BE_OFF, *_DYNAMIC_SHIFT_KEYS}
        for key in config:
            if key not in known and key not in _IGNORED_KEYS:
                raise ConfigError(f"{source}: unknown key {key!r} (known: {sorted(known)})")
        class_name = config.get("_class_name", "FlowMatchEulerDiscreteScheduler")
        if class_name != "FlowMatchEulerDiscreteScheduler":
            raise ConfigError(f"{source}: _class_name {class_name!r}; LongCat uses FlowMatchEulerDiscreteScheduler")
        for key in _MUST_BE_OFF:
            if config.get(key, False):
                raise ConfigError(f"{source}: {key}=true is not supported (LongCat ships it false); set it to false")
        time_shift_type = config.get("time_shift_type", "exponential")
        if time_shift_type not in ("exponential", "linear"):
            raise ConfigError(f"{source}: time_shift_type must be 'exponential' or 'linear', got {time_shift_type!r}")

        num_train = config.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS)
        if num_train != NUM_TRAIN_TIMESTEPS or isinstance(num_train, bool):
            raise ConfigError(
                f"{source}: num_train_timesteps must be {NUM_TRAIN_TIMESTEPS} "
                f"(LongCat's pipeline assumes it), got {num_train!r}"
            )
        shift = config.get("shift", 1.0)
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
            raise ConfigError(f"{source}: shift must be a positive number, got {shift!r}")
        shift_terminal = config.get("shift_terminal")
        if shift_terminal is not None and (
            isinstance(shift_terminal, bool)
            or not isinstance(shift_terminal, (int, float))
            or not 0.0 <= shift_terminal < 1.0
        ):
            raise ConfigError(f"{source}: shift_terminal must be null or in [0, 1), got {shift_terminal!r}")
        return cls(num_train_timesteps=int(num_train), shift=float(shift), shift_terminal=shift_terminal)

    @classmethod
    def load(cls, model_path: str | Path | None) -> SchedulerConfig:
        """Reads `<model_path>/scheduler/scheduler_config.json` when present, else the defaults LongCat ships."""
        if model_path is None:
            return cls()
        path = Path(model_path) / "scheduler" / "scheduler_config.json"
        if not path.is_file():
            return cls()
        return cls.from_dict(read_json_object(path, "scheduler config"), source=str(path))


class Schedule(NamedTuple):
    """A sampling schedule: `sigmas` [N + 1] float32 ending in 0, `timesteps` [N] float32 for the DiT.

    A NamedTuple of arrays is a pytree, so a whole schedule can be passed into a jitted loop and indexed there.
    """

    sigmas: jax.Array  # [N + 1]
    timesteps: jax.Array  # [N]

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])


def plain_sigmas(num_steps: int) -> np.ndarray:
    """`linspace(1, 0.001, num_steps)` in float32 [num_steps], bit for bit as the original's default table
    (`torch.linspace` in float32: a float32 step, the first half counted up from 1 and the second half down from
    0.001; numpy's float64 linspace rounded to float32 differs by an ulp at 10 of 50 steps)."""
    _check_steps(num_steps)
    start, end = np.float32(1.0), np.float32(0.001)
    if num_steps == 1:
        return np.array([start], np.float32)
    step = np.float64(np.float32((end - start) / np.float32(num_steps - 1)))
    index = np.arange(num_steps)
    return np.where(index < num_steps // 2, np.float64(start) + step * index,
                    np.float64(end) - step * (num_steps - 1 - index)).astype(np.float32)


def distill_sigmas(num_steps: int) -> np.ndarray:
    """The distilled sampler's table [num_steps]: `num_steps` picks from the 50 training timesteps 1000, 980, ..., 20.

    Picks are `floor(linspace(0, 50, num_steps, endpoint=False))`, so 16 steps give 1.0, 0.94, ..., 0.08.
    """
    _check_steps(num_steps)
    stride = NUM_TRAIN_TIMESTEPS // DISTILL_TRAIN_STEPS
    train_timesteps = np.round(np.arange(1, DISTILL_TRAIN_STEPS + 1, dtype=np.float32) * stride).astype(np.int64)
    picks = np.floor(np.linspace(0, DISTILL_TRAIN_STEPS, num=num_steps, endpoint=False)).astype(np.int64)
    return train_timesteps[::-1][picks].astype(np.float32) / np.float32(NUM_TRAIN_TIMESTEPS)


def make_schedule(num_steps: int, *, distill: bool = False, config: SchedulerConfig | None = None) -> Schedule:
    """The table the original uses for `num_steps` steps, after the scheduler config's shift; 0 appended."""
    config = config or SchedulerConfig()
    sigmas = distill_sigmas(num_steps) if distill else plain_sigmas(num_steps)
    sigmas = _apply_config(sigmas, config)
    timesteps = sigmas * np.float32(config.num_train_timesteps)
    return _as_schedule(np.concatenate([sigmas, np.zeros(1, np.float32)]), timesteps)


def start_at(schedule: Schedule, t_thresh: float) -> Schedule:
    """Refinement's truncated schedule: start at `t_thresh * 1000`, then keep the steps strictly below it.

    The sigmas are rebuilt as `timesteps / 1000` with 0 appended, as the original does. `t_thresh` 0 keeps the
    schedule unchanged (the original's `if t_thresh:`).
    """
    if not t_thresh:
        return schedule
    if not 0.0 < t_thresh <= 1.0:
        raise ConfigError(f"t_thresh must be in (0, 1], got {t_thresh!r}")
    timesteps = np.asarray(schedule.timesteps)
    start = np.float32(t_thresh * NUM_TRAIN_TIMESTEPS)
    return _from_timesteps(np.concatenate([start[None], timesteps[timesteps < start]]))


def with_uniform_tail(schedule: Schedule) -> Schedule:
    """Video continuation's `enhance_hf` schedule: steps above t=500 kept, then 500, 450, ..., 50 (10 steps)."""
    timesteps = np.asarray(schedule.timesteps)
    tail = np.linspace(UNIFORM_TAIL_START, 0.0, UNIFORM_TAIL_STEPS, endpoint=False, dtype=np.float32)
    return _from_timesteps(np.concatenate([timesteps[timesteps > UNIFORM_TAIL_START], tail]))


def euler_step(
    latents: jax.Array, model_output: jax.Array, sigma: jax.Array, sigma_next: jax.Array, *, num_cond_latents: int = 0
) -> jax.Array:
    """One Euler step on the negated DiT output: `x + (sigma_next - sigma) * (-model_output)`, computed in float32.

    latents, model_output: [B, C, T, H, W]; sigma, sigma_next: scalars. The first `num_cond_latents` latent frames
    are clean conditions and stay as they are (i2v, refinement with conditions). Returns latents' dtype.
    """
    dt = jnp.asarray(sigma_next, jnp.float32) - jnp.asarray(sigma, jnp.float32)
    noisy = latents[:, :, num_cond_latents:].astype(jnp.float32)
    velocity = -model_output[:, :, num_cond_latents:].astype(jnp.float32)
    stepped = (noisy + dt * velocity).astype(latents.dtype)
    if num_cond_latents == 0:
        return stepped
    return latents.at[:, :, num_cond_latents:].set(stepped)


def noise_to_level(clean: jax.Array, noise: jax.Array, sigma: float | jax.Array) -> jax.Array:
    """The flow-matching forward process `(1 - sigma) * clean + sigma * noise` (refinement starts from it)."""
    return (1.0 - sigma) * clean + sigma * noise


def frame_timesteps(timestep: jax.Array, batch: int, num_frames: int, num_cond_latents: int = 0) -> jax.Array:
    """The DiT's per-latent-frame timestep [batch, num_frames]: `timestep` everywhere, 0 on condition frames."""
    per_frame = jnp.full((batch, num_frames), timestep, dtype=jnp.float32)
    if num_cond_latents == 0:
        return per_frame
    return per_frame.at[:, :num_cond_latents].set(0.0)


def _check_steps(num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ConfigError(f"num_inference_steps must be a positive integer, got {num_steps!r}")


def _apply_config(sigmas: np.ndarray, config: SchedulerConfig) -> np.ndarray:
    """The scheduler's own transforms of a given table: time shift, then the optional stretch to `shift_terminal`."""
    shift = config.shift
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    if config.shift_terminal:
        one_minus = 1 - sigmas
        scale = one_minus[-1] / (1 - config.shift_terminal)
        sigmas = 1 - one_minus / scale
    return sigmas.astype(np.float32)


def _from_timesteps(timesteps: np.ndarray) -> Schedule:
    timesteps = timesteps.astype(np.float32)
    sigmas = np.concatenate([timesteps / np.float32(NUM_TRAIN_TIMESTEPS), np.zeros(1, np.float32)])
    return _as_schedule(sigmas, timesteps)


def _as_schedule(sigmas: np.ndarray, timesteps: np.ndarray) -> Schedule:
    return Schedule(sigmas=jnp.asarray(sigmas, jnp.float32), timesteps=jnp.asarray(timesteps, jnp.float32))
