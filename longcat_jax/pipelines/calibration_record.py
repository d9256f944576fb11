"""`generate --record-calibration FILE.npz`: a run's DiT calls saved as GPTQ calibration inputs.

GPTQ (`python -m convert ... --quantize int8 --calibration FILE.npz`) rounds each weight by the second moments of
the inputs its Linear sees; inputs from real runs of the user's own prompts describe those best. While
`recording_dit_calls(path)` is active, every denoising step (`Denoiser.step`) run in that thread hands its DiT
input to the recorder; each batch entry is one call (a guided step's two branches are two: the negative prompt's
and the prompt's). Left out: steps with condition frames or a KV cache (their per-frame timesteps are not one
number) and steps of another shape than the first recorded (a refinement stage), since a calibration file holds
calls of one shape. When the block ends normally, at most `max_calls` calls, evenly spread over those recorded,
are written (`CalibrationInputs.save`) and the file is named in the log. The host keeps every recorded call until
then (a 480p call's latents are about 10 MB in float32; the steps of one prompt share one copy of its text
embeddings).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

import numpy as np

from longcat_jax.errors import InputError
from longcat_jax.models.dit.calibration_inputs import CalibrationInputs

logger = logging.getLogger(__name__)

MAX_CALLS = 32
_active = threading.local()


class CallRecorder:
    """The calls one `recording_dit_calls` block has seen: (latents [C, T, H, W], timestep, text [1, L, C], mask [L])."""

    def __init__(self, path: Path, max_calls: int):
        self.path, self.max_calls = path, max_calls
        self.calls: list[tuple[np.ndarray, float, np.ndarray, np.ndarray]] = []
        self.skipped = 0
        self._text_on_host: tuple[object, object, np.ndarray, np.ndarray] | None = None  # (text, mask, copies)

    def add(self, latents, text, mask, timestep: float, *, guided: bool, conditioned: bool) -> None:
        if conditioned:
            self.skipped += 1
            return
        latents = np.asarray(latents, np.float32)  # [B, C, T, H, W]
        if guided:
            latents = np.concatenate([latents, latents])  # the step's model input: [uncond; cond]
        text, mask = self._host_copy(text, mask)  # [B', 1, L, C], [B', L]
        if self.calls and (latents.shape[1:], text.shape[1:]) != (self.calls[0][0].shape, self.calls[0][2].shape):
            self.skipped += 1
            return
        self.calls += [(latents[i], float(timestep), text[i], mask[i]) for i in range(latents.shape[0])]

    def _host_copy(self, text, mask) -> tuple[np.ndarray, np.ndarray]:
        """text and mask on the host, copied once for the steps that feed the same arrays (a run's steps all do):
        the recorded calls then share one copy of the text's embeddings instead of holding one each."""
        held = self._text_on_host
        if held is None or held[0] is not text or held[1] is not mask:
            held = (text, mask, np.asarray(text, np.float32), np.asarray(mask, np.int32))
            self._text_on_host = held
        return held[2], held[3]

    def save(self) -> None:
        if not self.calls:
            logger.warning("--record-calibration %s: no denoising step without condition frames ran; nothing "
                           "written", self.path)
            return
        chosen = np.unique(np.linspace(0, len(self.calls) - 1, min(self.max_calls, len(self.calls))).round().astype(int))
        picked = [self.calls[i] for i in chosen]
        inputs = CalibrationInputs(np.stack([c[0] for c in picked]), np.array([c[1] for c in picked], np.float32),
                                   np.stack([c[2] for c in picked]), np.stack([c[3] for c in picked]),
                                   source=str(self.path))
        inputs.save(self.path)
        logger.info("--record-calibration: %d of %d DiT calls written to %s (%d steps of other shapes or with "
                    "condition frames left out)", inputs.calls, len(self.calls), self.path, self.skipped)


def check_record_path(path: str | Path) -> Path:
    """The file `--record-calibration` will write, refused before the run if its folder is missing or it is not .npz."""
    path = Path(path)
    if path.suffix != ".npz":
        raise InputError(f"--record-calibration writes an .npz file; got {path}, name it e.g. calibration.npz")
    if not path.parent.is_dir():
        raise InputError(f"--record-calibration {path}: folder {path.parent} does not exist; create it first")
    return path


@contextlib.contextmanager
def recording_dit_calls(path: str | Path | None, max_calls: int = MAX_CALLS):
    """Records the denoising steps run inside the block (see the module docstring) and yields the `CallRecorder`;
    None records nothing (and yields None)."""
    if path is None:
        yield None
        return
    recorder = CallRecorder(check_record_path(path), max_calls)
    _active.recorder = recorder
    try:
        yield recorder
    finally:
        _active.recorder = None
    recorder.save()


def record_dit_call(latents, text, mask, timestep: float, *, guided: bool, conditioned: bool) -> None:
    """Hands one denoising step's DiT input to this thread's active recorder, if any. latents [B, C, T, H, W] (the
    step's input, before the guided doubling); text [B', 1, L, C], mask [B', L] as the step feeds them."""
    recorder = getattr(_active, "recorder", None)
    if recorder is not None:
        recorder.add(latents, text, mask, timestep, guided=guided, conditioned=conditioned)
