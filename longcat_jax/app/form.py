"""The page's fields as a `RunRequest`: the same request the CLI makes from its flags, so the task registry checks
it with the CLI's messages.

What the page adds: uploads are checked (size, and an image or video file name) before they are read; the seed
may be "random"; a custom BSA is written as a `--bsa-config` file; LoRAs are one `PATH[:MULTIPLIER]` a line. Only
the inputs and settings the chosen task reads (the registry's tables) go into the request, so a file or a number
left in a field of another task is not an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
from pathlib import Path

from longcat_jax.app.engine import AppSettings
from longcat_jax.configs import short_preset_names
from longcat_jax.errors import InputError
from longcat_jax.pipelines.request import RunRequest
from longcat_jax.pipelines.tasks import TASKS, setting_applies

BSA_DEFAULT = "model default"
BSA_CUSTOM = "custom"
SIZE_DEFAULT = "model default"
SIZE_CUSTOM = "custom"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")
# The tasks the size fields size: i2v and continuation take their input's bucket, the refinement its own fields.
SIZED_TASKS = ("t2v", "long")
RANDOM_SEED_BOUND = 2**31  # a random seed is below it (short enough to read and type again)
DEFAULT_MAX_UPLOAD_MB = 500


def bsa_presets() -> list[str]:
    """The short names of the packaged BSA presets (`balanced`, `fast`, ...), as `--bsa-config` takes them."""
    return list(short_preset_names())


@dataclasses.dataclass(frozen=True)
class FormValues:
    """Every field of the page, as Gradio gives them (None or "" where left empty, text fields included)."""

    task: str = "t2v"
    prompt: str | None = ""
    negative_prompt: str | None = ""
    image: str | None = None  # i2v: the first frame; refine: an image condition
    video: str | None = None  # continuation: the video to continue; refine: a condition video
    refine_from: str | None = None  # refine: the stage-1 video
    size: str = SIZE_DEFAULT  # "HxW" of a bucket, SIZE_DEFAULT, or SIZE_CUSTOM (height, width)
    height: float | None = None
    width: float | None = None
    resolution: str = "480p"
    output_size: str = "input"
    refine_height: float | None = None
    refine_width: float | None = None
    num_frames: float | None = None
    num_cond_frames: float | None = None
    num_inference_steps: float | None = None
    refine_inference_steps: float | None = None
    guidance_scale: float | None = None
    seed: str | None = "42"
    distill: bool = False
    refine: bool = False
    spatial_refine_only: bool = False
    num_segments: float | None = None
    segment_prompts: str | None = ""  # long: one prompt a line, a segment each
    bsa: str = BSA_DEFAULT  # BSA_DEFAULT, a preset's name, or BSA_CUSTOM
    sparsity: float | None = None
    cdf_threshold: float | None = None
    chunk_q: str | None = "4,4,4"
    chunk_k: str | None = "4,4,4"
    loras: str | None = ""
    quantize: str = "none"


def build_request(values: FormValues, settings: AppSettings, work_dir: Path,
                  max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> RunRequest:
    """The request of the page's fields (see the module docstring); `work_dir` takes the custom BSA files."""
    task = TASKS.get(values.task)
    if task is None:
        raise InputError(f"unknown task {values.task!r}; pick one of {list(TASKS)}")
    inputs = {
        "image": _upload(values.image, "image", IMAGE_SUFFIXES, max_upload_mb),
        "video": _upload(values.video, "video", VIDEO_SUFFIXES, max_upload_mb),
        "refine_from": _upload(values.refine_from, "video", VIDEO_SUFFIXES, max_upload_mb),
    }
    height, width = _size(values) if task.name in SIZED_TASKS else (None, None)
    refine = values.refine and task.generates
    stage_settings = {
        "negative_prompt": values.negative_prompt or None,
        "height": height,
        "width": width,
        "resolution": values.resolution,
        "output_size": values.output_size,
        "num_frames": _integer(values.num_frames),
        "num_cond_frames": _integer(values.num_cond_frames),
        "num_inference_steps": _integer(values.num_inference_steps),
        "refine_inference_steps": _integer(values.refine_inference_steps),
        "guidance_scale": values.guidance_scale or None,
        "distill": values.distill,
        "spatial_refine_only": values.spatial_refine_only,
        "num_segments": _integer(values.num_segments),
        "segment_prompts": tuple(line.strip() for line in (values.segment_prompts or "").splitlines() if line.strip()),
        "refine_height": _integer(values.refine_height),
        "refine_width": _integer(values.refine_width),
    }
    return settings.request(
        task=task.name,
        prompt=(values.prompt or "").strip() or None,
        **{field: path for field, path in inputs.items() if field in task.reads},
        # the fields of other tasks keep what was typed there, which this task would not read (and the CLI refuses)
        **{field: value for field, value in stage_settings.items() if setting_applies(field, task, refine)},
        seed=parse_seed(values.seed),
        refine=refine,
        bsa_config=_bsa_config(values, work_dir),
        lora=tuple(line.strip() for line in (values.loras or "").splitlines() if line.strip()),
        quantize=values.quantize,
    )


def parse_seed(text: str | None) -> int:
    """An integer (its range is the CLI's to check), or "random" (or empty) for a fresh one; the seed used is in
    the result's provenance."""
    text = (text or "").strip()
    if text.lower() in ("", "random"):
        return secrets.randbelow(RANDOM_SEED_BOUND)
    try:
        return int(text)
    except ValueError:
        raise InputError(f"the seed must be an integer or 'random', got {text!r}") from None


def size_labels(buckets: list[tuple[int, int]]) -> list[str]:
    """The size field's choices: the model's default, each bucket as "HxW", and custom."""
    return [SIZE_DEFAULT, *(f"{h}x{w}" for h, w in buckets), SIZE_CUSTOM]


def _size(values: FormValues) -> tuple[int | None, int | None]:
    if values.size == SIZE_DEFAULT:
        return None, None
    if values.size == SIZE_CUSTOM:
        return _integer(values.height), _integer(values.width)
    height, _, width = values.size.partition("x")
    if not (height.isdigit() and width.isdigit()):
        raise InputError(f"size must be HxW (e.g. 480x832), {SIZE_DEFAULT!r} or {SIZE_CUSTOM!r}; got {values.size!r}")
    return int(height), int(width)


def _integer(value: float | None) -> int | None:
    """A number field as an int; None (the default) when empty or 0, as the page shows an empty number field as 0.
    A fraction is refused rather than cut."""
    if not value:
        return None
    if float(value) != int(float(value)):
        raise InputError(f"expected a whole number, got {value}")
    return int(float(value))


def _upload(path: str | None, kind: str, suffixes: tuple[str, ...], max_mb: float) -> Path | None:
    """An uploaded file's path, refused unless it is a file of an image or video type within the size limit."""
    if not path:
        return None
    path = Path(path)
    if not path.is_file():
        raise InputError(f"the uploaded {kind} {path.name} is gone; upload it again")
    if path.suffix.lower() not in suffixes:
        raise InputError(f"{path.name} is not an {kind} file this app reads; upload one of {', '.join(suffixes)}")
    size_mb = path.stat().st_size / 2**20
    if size_mb > max_mb:
        raise InputError(f"{path.name} is {size_mb:.0f} MB; the app takes uploads up to {max_mb:g} MB "
                         "(start it with a larger --max-upload-mb)")
    return path


def _bsa_config(values: FormValues, work_dir: Path) -> Path | None:
    """The `--bsa-config` of the BSA field: none (the stages' defaults), a preset's name, or the custom values
    written as a file (both then read by the CLI's reader, which names any bad key)."""
    if values.bsa == BSA_DEFAULT:
        return None
    if values.bsa != BSA_CUSTOM:
        return Path(values.bsa)
    config = {
        "enable_bsa": True,
        "bsa_params": {
            "sparsity": values.sparsity,
            "cdf_threshold": values.cdf_threshold,
            "chunk_3d_shape_q": _chunk_shape(values.chunk_q, "query"),
            "chunk_3d_shape_k": _chunk_shape(values.chunk_k, "key"),
        },
    }
    text = json.dumps(config, indent=2)
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / f"custom_bsa_{hashlib.sha1(text.encode()).hexdigest()[:12]}.json"  # one file per config
    path.write_text(text)
    return path


def _chunk_shape(text: str | None, which: str) -> list[int]:
    parts = [part.strip() for part in (text or "").replace("x", ",").split(",")]
    if len(parts) != 3 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise InputError(f"the BSA {which} chunk shape must be three positive integers (t,h,w) like 4,4,4; got {text!r}")
    return [int(part) for part in parts]
