"""The DiT calls that GPTQ calibration runs (`models.dit.calibration`): from an .npz file, or random stand-ins.

A `CalibrationInputs` is S calls of the DiT with one batch entry each, all of one shape:

    latents [S, C, T, H, W]   noisy latents as the sampler passes them (C the DiT's in_channels)
    timestep [S]              the sampler's timesteps, 0..1000
    text [S, 1, L, C_cap]     the text encoder's output (C_cap the DiT's caption_channels)
    text_mask [S, L]          1 for the prompt's tokens, 0 for padding

stored as float32 (mask int32) arrays of those names in an .npz file (`save` / `load`). GPTQ's rounding follows
the inputs' second moments, so inputs from real runs of the user's own prompts describe the model best;
`random_calibration` draws latents and text N(0, 1) at timesteps spread over the schedule, which works on any
machine and needs nothing but the config (how close it comes to real inputs is not measured: no real weights
here).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from longcat_jax.errors import InputError
from longcat_jax.models.dit.config import DiTConfig

FIELDS = ("latents", "timestep", "text", "text_mask")
RANKS = {"latents": 5, "timestep": 1, "text": 4, "text_mask": 2}
TEXT_TOKENS = 512  # the text encoder's padded length in LongCat-Video


@dataclasses.dataclass(frozen=True)
class CalibrationInputs:
    """S DiT calls of one shape (see the module docstring); checked on construction."""

    latents: np.ndarray  # [S, C, T, H, W] float32
    timestep: np.ndarray  # [S] float32
    text: np.ndarray  # [S, 1, L, C_cap] float32
    text_mask: np.ndarray  # [S, L] int32
    source: str = "calibration inputs"

    def __post_init__(self):
        for name in FIELDS:
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.ndim != RANKS[name] or array.shape[0] == 0:
                shape = getattr(array, "shape", type(array).__name__)
                raise InputError(f"{self.source}: {name!r} must be a {RANKS[name]}-D array with one entry per call "
                                 f"(see longcat_jax.models.dit.calibration_inputs), got {shape}")
            if array.shape[0] != self.latents.shape[0]:
                raise InputError(f"{self.source}: {name!r} holds {array.shape[0]} calls, 'latents' "
                                 f"{self.latents.shape[0]}; every array needs one entry per call")
            if not np.isfinite(array).all():
                raise InputError(f"{self.source}: {name!r} holds NaN or infinite values; record the inputs again")
        if self.text.shape[1] != 1 or self.text_mask.shape[1] != self.text.shape[2]:
            raise InputError(f"{self.source}: 'text' must be [S, 1, L, C] with 'text_mask' [S, L]; got text "
                             f"{self.text.shape} and text_mask {self.text_mask.shape}")
        if not ((self.timestep >= 0) & (self.timestep <= 1000)).all():
            raise InputError(f"{self.source}: 'timestep' must lie in 0..1000 (the sampler's scale), got "
                             f"{self.timestep.min()}..{self.timestep.max()}")

    @property
    def calls(self) -> int:
        return self.latents.shape[0]

    def check_fits(self, config: DiTConfig) -> None:
        """Refuses inputs that the DiT of `config` cannot take, before any weight is read."""
        if self.latents.shape[1] != config.in_channels:
            raise InputError(f"{self.source}: 'latents' have {self.latents.shape[1]} channels, this DiT takes "
                             f"{config.in_channels}; record the inputs with this model")
        if self.text.shape[-1] != config.caption_channels:
            raise InputError(f"{self.source}: 'text' is {self.text.shape[-1]} wide, this DiT's caption_channels is "
                             f"{config.caption_channels}; record the inputs with this model's text encoder")
        for axis, patch in zip(self.latents.shape[2:], config.patch_size, strict=True):
            if axis % patch:
                raise InputError(f"{self.source}: latent grid {self.latents.shape[2:]} is not divisible by the patch "
                                 f"size {config.patch_size}")

    def call(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Call `index`'s DiT arguments, each with a batch axis of 1."""
        return tuple(getattr(self, name)[index:index + 1] for name in FIELDS)

    def save(self, path: str | Path) -> None:
        np.savez(Path(path), **{name: getattr(self, name) for name in FIELDS})

    @classmethod
    def load(cls, path: str | Path) -> CalibrationInputs:
        """Reads an .npz file of the four arrays (see the module docstring)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"calibration file {path} does not exist; pass an .npz of DiT inputs or 'random'")
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: np.asarray(stored[name]) for name in FIELDS if name in stored.files}
        except (OSError, ValueError) as e:
            raise InputError(f"calibration file {path} is not a readable .npz file ({e})") from e
        missing = [name for name in FIELDS if name not in arrays]
        if missing:
            raise InputError(f"calibration file {path} lacks {missing}; it needs the arrays {list(FIELDS)} "
                             "(see longcat_jax.models.dit.calibration_inputs)")
        return cls(arrays["latents"].astype(np.float32), arrays["timestep"].astype(np.float32),
                   arrays["text"].astype(np.float32), arrays["text_mask"].astype(np.int32), source=str(path))


def random_calibration(config: DiTConfig, grid: tuple[int, int, int] = (4, 16, 32), calls: int = 16,
                       text_tokens: int = TEXT_TOKENS, seed: int = 0) -> CalibrationInputs:
    """`calls` DiT calls on a token grid (T, H, W) (after the patches): latents and text N(0, 1), timesteps evenly
    spread over (0, 1000), prompts of 3/4 of `text_tokens` tokens. The defaults give every quantized Linear of the
    real config at least twice as many input rows as it has inputs (`calibration.ROWS_PER_INPUT`): 32,768 token rows
    for w2's 11,008 inputs, 8,192 text rows for the kv's 4,096."""
    if min(grid) < 1 or calls < 1 or text_tokens < 1:
        raise InputError(f"random calibration needs a positive grid, calls and text_tokens; got {grid=}, {calls=}, "
                         f"{text_tokens=}")
    rng = np.random.default_rng(seed)
    shape = (calls, config.in_channels, *(g * p for g, p in zip(grid, config.patch_size, strict=True)))
    mask = np.zeros((calls, text_tokens), np.int32)
    mask[:, :max(1, 3 * text_tokens // 4)] = 1
    return CalibrationInputs(
        rng.standard_normal(shape, np.float32),
        ((np.arange(calls, dtype=np.float32) + 0.5) * (1000.0 / calls)).astype(np.float32),
        rng.standard_normal((calls, 1, text_tokens, config.caption_channels), np.float32),
        mask,
        source=f"random calibration (seed {seed})",
    )
