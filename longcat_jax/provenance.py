"""The provenance sidecar: `NAME.json` beside every video `python -m longcat_jax.generate` writes, and the request
in it run again by `--from-json NAME.json`.

Format version 1 (`FORMAT_VERSION`), one JSON object with these keys (`TOP_KEYS`; null where they do not apply):

    format, format_version   "longcat_jax.provenance" and 1: what the file is, and how to read it
    created                  when the video was made (ISO 8601, local time with its offset)
    command                  the full command line that made it (shell-quoted)
    task                     t2v, i2v, continuation, long or refine
    prompt, refine_prompt    the prompt of the generation, and of the refinement when there is one
    negative_prompt          the negative prompt the guided stages used (null: no guidance)
    seed                     --seed (later stages derive theirs from it; each stage below shows its own)
    stages                   one object a denoising stage (`STAGE_KEYS`): its name (t2v, i2v, continuation,
                             refinement), height, width, frames, condition frames, steps, guidance (null:
                             unguided), seed, BSA (`bsa_params` as in a BSA config, or null for dense) and the
                             checkpoint LoRAs it applies (cfg_step_lora, refinement_lora)
    output                   path, format, frames, height, width and fps of the video written
    precision                dtype and --quantize of the models
    loras                    the --lora files (absolute paths) and their multipliers, applied in every stage
    inputs                   the sha256 of each file the run read besides the checkpoint (--image, --video,
                             --refine-from, each --lora; a LoRA folder: over its files), so that a run again can
                             tell an edited or replaced file from the same one (absent in sidecars written before)
    checkpoint               builtin (the random built-in model), model_path as given, the local folder, and the
                             sha256 of each of its parts' JSON files (configs, weight indexes, tokenizer, scheduler)
                             with one fingerprint over them all
    software                 our version and git commit (null outside a checkout; dirty: uncommitted changes),
                             JAX's and jaxlib's versions, Python's, and the devices
    timings                  the summary: seconds per stage, steps, seconds per step; total; peak memory
    batch                    for an item of --prompts: its file, line, and the lines denoised with it (null else)
    request                  every flag of the run (`RunRequest`, None: the default), paths absolute

`--from-json` runs `request` again: everything that decides the video comes from the sidecar, the device split
(--context-parallel, --fsdp, --max-device-memory) included, since it moves the float rounding (a --context-parallel
larger than this machine's device count falls back to the command line's, with a warning); where the video is written
and the compilation cache (`LOCAL_FIELDS`) come from the command line, and a flag given there replaces the sidecar's
value. A sidecar of another format or format version, or with a key this version does not know, is refused by name.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import importlib.metadata
import json
import logging
import platform
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from longcat_jax.bsa_config import params_to_json
from longcat_jax.checkpoint.layout import DISTILL_LORA, REFINE_LORA
from longcat_jax.errors import ConfigError
from longcat_jax.json_io import read_json_object
from longcat_jax.models.dit.lora import parse_lora_spec
from longcat_jax.pipelines.buckets import RESOLUTIONS
from longcat_jax.pipelines.options import Sampling
from longcat_jax.pipelines.request import OUTPUT_SIZES, RunRequest, flag_name
from longcat_jax.pipelines.stats import RunStats, peak_memory_line
from longcat_jax.pipelines.tasks import DTYPES, INPUT_FLAGS, TASKS, RunPlan, run_dtype, stage_plans
from longcat_jax.quantization import MODES as QUANTIZE_MODES
from longcat_jax.video_io import OUTPUT_FORMATS, atomic_file, save_video

logger = logging.getLogger(__name__)

FORMAT = "longcat_jax.provenance"
FORMAT_VERSION = 1
TOP_KEYS = ("format", "format_version", "created", "command", "task", "prompt", "refine_prompt", "negative_prompt",
            "seed", "stages", "output", "precision", "loras", "inputs", "checkpoint", "software", "timings", "batch",
            "request")
STAGE_KEYS = ("stage", "height", "width", "num_frames", "num_cond_frames", "num_inference_steps", "guidance_scale",
              "seed", "bsa", "checkpoint_loras")
SECTION_KEYS = {  # the keys of each object-valued section
    "output": ("path", "format", "frames", "height", "width", "fps"),
    "precision": ("dtype", "quantize"),
    "checkpoint": ("builtin", "model_path", "folder", "files", "fingerprint"),
    "software": ("longcat_jax", "commit", "dirty", "jax", "jaxlib", "python", "devices"),
    "timings": ("stages", "total_seconds", "peak_memory"),
    "batch": ("file", "line", "denoised_with"),
}
LIST_KEYS = {"stages": STAGE_KEYS, "loras": ("path", "multiplier"),  # the keys of each list section's objects
             "inputs": ("flag", "path", "sha256")}
TIMING_KEYS = ("stage", "seconds", "steps", "seconds_per_step")
# This machine's business: --from-json takes the command line's.
LOCAL_FIELDS = ("output_path", "compilation_cache", "record_calibration")
RUN_MODE_FIELDS = ("prompts", "batch_size", "from_json")  # how the CLI was driven: not part of a video's request
REQUEST_FIELDS = {field.name: field for field in dataclasses.fields(RunRequest)}
PATH_FIELDS = tuple(name for name, field in REQUEST_FIELDS.items() if "Path" in str(field.type))
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class BatchItem:
    """Where a video of a `--prompts` file came from: the file, its line, and the lines denoised with it."""

    file: Path
    line: int
    denoised_with: tuple[int, ...] = ()


def sidecar_path(output: Path, output_format: str) -> Path:
    """`NAME.json` beside the output `NAME.mp4`, `NAME.npz` or the frames folder `NAME`."""
    return output.with_name(output.name + ".json") if output_format == "frames" else output.with_suffix(".json")


def write_video_and_sidecar(plan: RunPlan, asked: RunRequest, frames: np.ndarray, fps: float, stats: RunStats, *,
                            command: Sequence[str], batch: BatchItem | None = None) -> Path:
    """Writes the video of `plan` and its sidecar (`build_record`; `asked`: the request as given, before its
    hub id was resolved), each atomically: the sidecar first, so that a video on disk always has one. A failed
    video write leaves what was there: the sidecar it replaced is put back (the old video is untouched), or the new
    one is removed. Returns the video's path."""
    output_format = plan.setup.request.output_format
    sidecar = sidecar_path(plan.output_path, output_format)
    record = build_record(plan, asked, frames.shape, fps, stats, command=command, batch=batch)
    previous = sidecar.read_bytes() if sidecar.is_file() else None
    _write_json(sidecar, record)
    try:
        with stats.stage("write output"):
            return save_video(plan.output_path, frames, fps, output_format)
    except BaseException:
        if previous is None:
            sidecar.unlink(missing_ok=True)
        else:
            _write_bytes(sidecar, previous)
        raise


def build_record(plan: RunPlan, asked: RunRequest, shape: Sequence[int], fps: float, stats: RunStats, *,
                 command: Sequence[str], batch: BatchItem | None = None) -> dict[str, Any]:
    """The sidecar of the video (frames `shape` [F, H, W, 3] at `fps`) that `plan` made (see the module docstring)."""
    request = plan.setup.request
    planned = planned_record(plan, asked)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(command),
        **{key: planned[key] for key in ("task", "prompt", "refine_prompt", "negative_prompt", "seed", "stages")},
        "output": {"path": str(plan.output_path.resolve()), "format": request.output_format, "frames": int(shape[0]),
                   "height": int(shape[1]), "width": int(shape[2]), "fps": float(fps)},
        **{key: planned[key] for key in ("precision", "loras", "inputs", "checkpoint", "software")},
        "timings": timings_record(stats),
        "batch": None if batch is None else {"file": str(batch.file.resolve()), "line": batch.line,
                                             "denoised_with": list(batch.denoised_with)},
        "request": request_record(asked, plan.output_path),
    }


def planned_record(plan: RunPlan, asked: RunRequest) -> dict[str, Any]:
    """The sidecar's keys that a checked plan decides, before it runs: task, prompts, seed, stages, precision,
    LoRAs, the input files' hashes, checkpoint and software."""
    setup, request = plan.setup, plan.setup.request
    negative = Sampling.resolve(setup.context.defaults, setup.generation).negative_prompt if plan.task.generates else None
    loras = [parse_lora_spec(spec) for spec in request.lora]
    return {
        "task": plan.task.name,
        "prompt": setup.prompt,
        "refine_prompt": setup.refine_prompt if setup.refinement is not None else None,
        "negative_prompt": negative,
        "seed": request.seed,
        "stages": stage_records(plan),
        "output_shape": list(plan.stages.output_shape),  # (frames, height, width) to write
        "segment_prompts": list(request.segment_prompts),
        "precision": {"dtype": np.dtype(run_dtype(request)).name, "quantize": request.quantize},
        "loras": [{"path": str(path.resolve()), "multiplier": multiplier} for path, multiplier in loras],
        "inputs": inputs_record(request),
        "checkpoint": checkpoint_record(asked.model_path, request.model_path),
        "software": software_record(),
    }


def stage_records(plan: RunPlan) -> list[dict[str, Any]]:
    """One `STAGE_KEYS` object per denoising stage of the plan."""
    records = []
    for name, stage in stage_plans(plan):
        sampling = getattr(stage, "sampling", None)
        if sampling is None:  # the refinement: no guidance, its own step count, the refinement LoRA
            steps, guidance, named = stage.num_inference_steps, None, [REFINE_LORA]
        else:
            steps, guidance = sampling.num_inference_steps, sampling.guidance_scale if sampling.guided else None
            named = [DISTILL_LORA] if sampling.distill else []
        records.append({
            "stage": name, "height": stage.height, "width": stage.width, "num_frames": stage.num_frames,
            "num_cond_frames": getattr(stage, "num_cond_frames", None), "num_inference_steps": steps,
            "guidance_scale": guidance, "seed": stage.seed, "bsa": params_to_json(stage.bsa), "checkpoint_loras": named,
        })
    return records


def checkpoint_record(given: Path | None, folder: Path | None) -> dict[str, Any]:
    """The checkpoint: `given` as the user named it (a folder or hub id), `folder` the local folder it resolved to
    (None for both: the built-in model), and the sha256 of its parts' JSON files."""
    if folder is None:
        return {"builtin": True, "model_path": None, "folder": None, "files": {}, "fingerprint": None}
    files = checkpoint_files(Path(folder))
    return {"builtin": False, "model_path": _as_given(given), "folder": str(Path(folder).resolve()), "files": files,
            "fingerprint": fingerprint(files)}


@functools.cache
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_files(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of the JSON files in the checkpoint's folder and its parts (configs, weight indexes,
    tokenizer and scheduler files); each file is hashed once per process while unchanged."""
    found = {}
    for path in sorted([*folder.glob("*.json"), *folder.glob("*/*.json")]):
        if path.is_file():
            stat = path.stat()
            found[path.relative_to(folder).as_posix()] = _file_sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)
    return found


def inputs_record(request: RunRequest) -> list[dict[str, str]]:
    """{flag, path, sha256} of each file `request` reads besides the checkpoint: --image, --video, --refine-from and
    each --lora (a converted LoRA folder: one sha256 over its files). Each is hashed once per process while its
    size and time stay the same."""
    files = [(flag, Path(getattr(request, field))) for field, flag in INPUT_FLAGS.items()
             if getattr(request, field) is not None]
    files += [("--lora", parse_lora_spec(spec)[0]) for spec in request.lora]
    return [{"flag": flag, "path": str(path.resolve()), "sha256": _content_sha256(path.resolve())}
            for flag, path in files]


def _content_sha256(path: Path) -> str:
    """The sha256 of a file, or of a folder's files (their relative names and contents)."""
    if path.is_dir():
        return fingerprint({p.relative_to(path).as_posix(): _content_sha256(p) for p in path.rglob("*") if p.is_file()})
    stat = path.stat()
    return _file_sha256(path, stat.st_size, stat.st_mtime_ns)


def _symmetric(recorded: Sequence[Mapping[str, Any]], planned: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The input entries of one side whose (flag, sha256) the other side lacks: a moved file of the same contents
    is the same input."""
    def keys(entries):
        return {(entry.get("flag"), entry.get("sha256")) for entry in entries}

    mine, theirs = keys(recorded), keys(planned)
    return [entry for entry in [*recorded, *planned] if (entry.get("flag"), entry.get("sha256")) not in mine & theirs]


def fingerprint(files: Mapping[str, str]) -> str:
    """One sha256 over {relative path: sha256}: equal exactly when every file is."""
    return hashlib.sha256("".join(f"{name}\t{digest}\n" for name, digest in sorted(files.items())).encode()).hexdigest()


@functools.cache
def software_record() -> dict[str, Any]:
    """Our version and commit, JAX's, jaxlib's, Python's, and the devices."""
    commit, dirty = _git_state()
    return {
        "longcat_jax": _version("longcat-jax"),
        "commit": commit,
        "dirty": dirty,
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "python": platform.python_version(),
        "devices": [f"{device.platform}:{device.id} {device.device_kind}" for device in jax.devices()],
    }


def timings_record(stats: RunStats) -> dict[str, Any]:
    """The summary's figures: seconds, steps and seconds per step of each stage; the total; peak memory."""
    stages = [{"stage": stage.name, "seconds": round(stage.seconds, 3), "steps": len(stage.step_times),
               "seconds_per_step": None if stage.seconds_per_step is None else round(stage.seconds_per_step, 4)}
              for stage in stats.stages]
    return {"stages": stages, "total_seconds": round(sum(stage.seconds for stage in stats.stages), 3),
            "peak_memory": peak_memory_line()}


def request_record(asked: RunRequest, output: Path) -> dict[str, Any]:
    """The request as JSON: paths absolute (a hub id, a preset name stay as given), LoRAs `PATH:MULTIPLIER`, the
    output where it was written, and the fields of the CLI's modes (--prompts, --from-json) at their defaults."""
    record = {}
    for name, field in REQUEST_FIELDS.items():
        value = field.default if name in RUN_MODE_FIELDS else getattr(asked, name)
        if name == "lora":
            value = [f"{path.resolve()}:{multiplier!r}" for path, multiplier in map(parse_lora_spec, value)]
        elif name == "output_path":
            value = str(output.resolve())
        elif name in PATH_FIELDS and value is not None:
            value = _as_given(value)
        record[name] = value
    return record


# ------------------------------------------------------------------------------------------------ reading


def read_sidecar(path: Path) -> dict[str, Any]:
    """A sidecar, checked: its format and version, and no key this version does not know (each named)."""
    record = read_json_object(path, "provenance sidecar", hint="pass the NAME.json written beside a video")
    where = f"provenance sidecar {path}"
    if record.get("format") != FORMAT:
        raise ConfigError(f"{where} is not a longcat_jax sidecar (its 'format' is {record.get('format')!r}, not "
                          f"{FORMAT!r}); pass the NAME.json written beside a video")
    if record.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"{where} has format version {record.get('format_version')!r}; this longcat_jax "
            f"({_version('longcat-jax')}) reads version {FORMAT_VERSION}: run it with the version that wrote it "
            f"(software.longcat_jax and software.commit in the file)"
        )
    problems = _unknown_keys(record)
    request = record.get("request")
    if not isinstance(request, Mapping):
        problems.append("'request' is missing or not an object")
    else:
        problems += [f"request.{name}: {problem}" for name, value in request.items()
                     if (problem := _request_value_problem(name, value))]
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems) + f"; it is not a format-version-{FORMAT_VERSION} "
                          "sidecar as this longcat_jax writes it (fix or remove those keys)")
    return record


def request_from_record(record: Mapping[str, Any], command_line: RunRequest, given: set[str]) -> RunRequest:
    """The request of a sidecar (`read_sidecar`), with `LOCAL_FIELDS` and the flags in `given` (the `RunRequest`
    fields set on the command line) taken from `command_line`."""
    fields = {}
    for name, value in record["request"].items():
        if name in PATH_FIELDS and value is not None:
            value = Path(value)
        elif isinstance(value, list):  # --lora, --segment-prompt
            value = tuple(value)
        fields[name] = value
    if "output_size" not in fields and fields.get("task") == "i2v":  # sidecars from before --output-size: i2v was
        fields["output_size"] = "generated"  # written at its generated size then
    if fields.get("num_segments") == 1 and (fields.get("task") != "long" or len(fields.get("segment_prompts", ())) > 1):
        fields["num_segments"] = None  # the default of sidecars from before it became None: one a segment prompt
    recorded_split = fields.get("context_parallel")
    if "context_parallel" not in given and recorded_split is not None and recorded_split > jax.device_count():
        logger.warning("--from-json: the sidecar's run split over --context-parallel %d devices and this machine has "
                       "%d; running with the default split, so the float rounding (the video) can differ slightly",
                       recorded_split, jax.device_count())
        fields["context_parallel"] = command_line.context_parallel
    for name in (*LOCAL_FIELDS, *RUN_MODE_FIELDS, *given):
        fields[name] = getattr(command_line, name)
    replaced = sorted(set(given) - set(LOCAL_FIELDS) - set(RUN_MODE_FIELDS))
    if replaced:
        logger.info("--from-json: the command line replaces the sidecar's %s", ", ".join(flag_name(n) for n in replaced))
    return RunRequest(**{**fields, "from_json": None})


def differences(recorded: Mapping[str, Any], planned: Mapping[str, Any]) -> list[str]:
    """What decides the video and differs between a sidecar and the `planned_record` of its run again: prompts (a
    long video's segment prompts too), seed, task, stages, the output's frames and size, precision, LoRAs, the input
    files' contents, the checkpoint's fingerprint, our version and commit, and JAX's version and devices."""
    found = [key for key in ("task", "prompt", "refine_prompt", "negative_prompt", "seed", "stages", "precision",
                             "loras") if recorded.get(key) != planned.get(key)]
    if (recorded.get("request") or {}).get("segment_prompts", []) != planned["segment_prompts"]:
        found.append("segment_prompts")
    if recorded.get("inputs") is not None:  # sidecars written before it was recorded: nothing to compare
        changed = sorted({entry["flag"] for entry in _symmetric(recorded["inputs"], planned["inputs"])})
        if changed:
            found.append(f"inputs ({', '.join(changed)}: other files or other contents)")
    output = recorded.get("output") or {}
    recorded_shape = [output.get(key) for key in ("frames", "height", "width")]
    if recorded_shape != planned["output_shape"]:
        (frames, height, width), planned_shape = recorded_shape, planned["output_shape"]
        found.append(f"output ({frames} frames of {height}x{width} recorded, {planned_shape[0]} of "
                     f"{planned_shape[1]}x{planned_shape[2]} planned)")
    if (recorded.get("checkpoint") or {}).get("fingerprint") != planned["checkpoint"]["fingerprint"]:
        found.append("checkpoint (its config and index files differ)")
    software = recorded.get("software") or {}
    found += [f"software.{key}" for key in ("longcat_jax", "commit", "dirty", "jax", "jaxlib", "devices")
              if software.get(key) != planned["software"][key]]
    return found


def _unknown_keys(record: Mapping[str, Any]) -> list[str]:
    problems = [f"unknown key {key!r}" for key in record if key not in TOP_KEYS]
    for section, keys in SECTION_KEYS.items():
        if isinstance(record.get(section), Mapping):
            problems += [f"unknown key '{section}.{key}'" for key in record[section] if key not in keys]
    for section, keys in LIST_KEYS.items():
        for index, item in enumerate(record.get(section) or []):
            if isinstance(item, Mapping):
                problems += [f"unknown key '{section}[{index}].{key}'" for key in item if key not in keys]
    for index, item in enumerate((record.get("timings") or {}).get("stages") or []):
        if isinstance(item, Mapping):
            problems += [f"unknown key 'timings.stages[{index}].{key}'" for key in item if key not in TIMING_KEYS]
    return problems


_REQUEST_CHOICES = {"task": tuple(TASKS), "dtype": tuple(DTYPES), "output_format": OUTPUT_FORMATS,
                    "quantize": QUANTIZE_MODES, "resolution": RESOLUTIONS,
                    "output_size": OUTPUT_SIZES}  # the CLI flags' choices


def _request_value_problem(name: str, value: Any) -> str | None:
    """Why `value` cannot be the RunRequest field `name` (unknown, of a type its annotation does not allow, or not
    one of its flag's choices)."""
    field = REQUEST_FIELDS.get(name)
    if field is None:
        return f"unknown field (a RunRequest has {', '.join(REQUEST_FIELDS)})"
    allowed = {part.strip() for part in str(field.type).split("|")}
    checks = {
        "None": lambda v: v is None,
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "Path": lambda v: isinstance(v, str),
        "tuple[str, ...]": lambda v: isinstance(v, list) and all(isinstance(item, str) for item in v),
    }
    if not any(checks.get(kind, lambda v: False)(value) for kind in allowed):
        return f"{value!r} is not {' or '.join(sorted(allowed))}"
    choices = _REQUEST_CHOICES.get(name, ())
    if value is not None and choices and value not in choices:  # as the CLI's flag would refuse it
        return f"{value!r} is not one of {', '.join(map(repr, choices))}"
    return None


def _as_given(value: Path | str | None) -> str | None:
    """A path as the record keeps it: absolute when it exists here, else as given (a hub id, a preset name)."""
    if value is None:
        return None
    path = Path(value)
    return str(path.resolve()) if path.exists() else str(value)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_state() -> tuple[str | None, bool | None]:
    """(commit, whether tracked files differ from it) of the checkout this package runs from; (None, None) when it
    is not one (an installed wheel) or git is missing or fails."""
    if not (REPO_ROOT / ".git").exists() or not (REPO_ROOT / "longcat_jax" / "__init__.py").is_file():
        return None, None
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head or None, bool(status.strip())


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    """`record` into `path` atomically, with the usual permissions (`_write_bytes`)."""
    _write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())


def _write_bytes(path: Path, data: bytes) -> None:
    """`data` into `path` atomically (a hidden temporary file moved into place), with the usual permissions."""
    with atomic_file(path) as temp:
        temp.write_bytes(data)
