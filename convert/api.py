"""`convert_checkpoint(src, dst)`: an original LongCat-Video checkpoint folder -> our converted folder.

Each part present in `src` is converted with the same name-mapping generator the loaders use:
`dit/` (sharded safetensors), `vae/`, `text_encoder/`, and every `lora/*.safetensors` (to
`lora/<name>/`); `tokenizer/` and `scheduler/` are copied unchanged. FastVideo's conversion of the checkpoint
(`longcat_jax.checkpoint.layout`: the DiT in `transformer/` with its own names, LoRAs in `lora/distilled/` and
`lora/refinement/`) converts to the same folder as the original: `dit/` with the original's config.json,
`lora/cfg_step_lora/`, `lora/refinement_lora/`. Every part is checked (the parts
a generation run needs present, configs parsed, shards present and well-formed, names, shapes and
dtypes mapped) before anything is written; tensors stream one group at a time, and dtypes are kept
(bf16 stays bf16). An interrupted conversion is resumed with `resume=True` (see `convert.destination`).
"""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from convert import destination
from longcat_jax.checkpoint.disk import require_space, writing
from longcat_jax.checkpoint.layout import (
    COPIED_PARTS,
    DIT,
    FASTVIDEO_DIT,
    LORA_DIR,
    REQUIRED_PARTS,
    TEXT_ENCODER,
    VAE,
    converted_lora_dir,
    dit_folder,
    lora_sources,
    missing_parts,
)
from longcat_jax.checkpoint.orbax_chunks import (
    PARTIAL_SUFFIX,
    finished_tensors,
    is_converted,
    partial_bytes,
    save_part,
)
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError, ConfigError
from longcat_jax.json_io import read_json_object
from longcat_jax.quantization import quantize_tensors, scheme_for

logger = logging.getLogger(__name__)

LORA_CONFIG = {"format": "longcat-dit-lora"}
RANDOM_CALIBRATION = "random"  # `--calibration random`: `random_calibration`'s stand-in inputs
_RESUME_FIX = "free some space, then run the same command with --resume to continue"


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, "config", missing_error=CheckpointError,
                            hint="every model part needs its config.json")


class _Job(NamedTuple):
    """One part to convert: its name, the folder of the source it is read from (for the resume fingerprint), its
    target (relative to the destination), the config.json to write there, its checked tensor stream, how many
    tensors that stream yields, and the checkpoint it reads."""

    name: str
    source: str
    target: Path
    config: dict[str, Any]
    tensors: Iterator
    count: int
    ckpt: SafetensorsCheckpoint


def _dit_part(folder: Path, block_order: bool = False):
    """The DiT in either naming (the original's `dit/`, FastVideo's `transformer/`); its config.json is written in
    the original's form. `block_order`: its tensors in the order GPTQ calibration reads them."""
    from longcat_jax.models.dit.config import DiTConfig, original_form
    from longcat_jax.models.dit.fastvideo_params import checkpoint_dit_tensors

    config, ckpt = DiTConfig.from_json(folder / "config.json"), SafetensorsCheckpoint(folder)
    tensors, count = checkpoint_dit_tensors(ckpt, config, block_order=block_order)
    return config, original_form(_read_json(folder / "config.json")), ckpt, tensors, count


def _vae_part(folder: Path):
    from longcat_jax.models.vae.config import VAEConfig
    from longcat_jax.models.vae.params import vae_tensors

    config, ckpt = VAEConfig.from_json(folder / "config.json"), SafetensorsCheckpoint(folder)
    return config, _read_json(folder / "config.json"), ckpt, vae_tensors(ckpt, config), len(ckpt.names())


def _text_encoder_part(folder: Path):
    from longcat_jax.models.text_encoder.config import UMT5Config
    from longcat_jax.models.text_encoder.params import text_encoder_tensors

    config, ckpt = UMT5Config.from_json(folder / "config.json"), SafetensorsCheckpoint(folder)
    return config, _read_json(folder / "config.json"), ckpt, text_encoder_tensors(ckpt, config), len(ckpt.names())


MODEL_PARTS: dict[str, Callable[[Path], tuple[Any, dict[str, Any], SafetensorsCheckpoint, Iterator, int]]] = {
    DIT: _dit_part,
    VAE: _vae_part,
    TEXT_ENCODER: _text_encoder_part,
}


def _primed(tensors: Iterator) -> Iterator:
    """Runs a generator up to its first tensor (where its whole-header checks happen) and returns the
    same stream, so refusals come before anything is written."""
    try:
        first = next(tensors)
    except StopIteration:
        return iter(())
    return itertools.chain([first], tensors)


def _calibration_inputs(calibration, config):
    """`calibration` ('random', an .npz path, or `CalibrationInputs`) as inputs for the DiT of `config`."""
    from longcat_jax.models.dit.calibration_inputs import CalibrationInputs, random_calibration

    if isinstance(calibration, CalibrationInputs):
        return calibration
    if str(calibration) == RANDOM_CALIBRATION:
        return random_calibration(config)
    return CalibrationInputs.load(calibration)  # `gptq_tensors` checks them against the config


def _plan(src: Path, quantize: str | None = None, calibration=None, *, progress: bool = True,
          resume_into: Path | None = None) -> list[_Job]:
    """Every model part and LoRA of `src`, each checked; the DiT's stream quantized by `quantize` (a
    `longcat_jax.quantization` mode), one tensor at a time, or with `calibration` by GPTQ one block at a time
    (its bar shown when `progress`; resuming into `resume_into`, the blocks finished there are taken as written,
    not rounded again)."""
    jobs = []
    dit_config = None
    for part, make in MODEL_PARTS.items():
        folder = dit_folder(src) if part == DIT else src / part
        if not folder.is_dir():
            continue
        config, config_dict, ckpt, tensors, count = (
            make(folder, block_order=True) if part == DIT and calibration is not None else make(folder))
        if part == DIT:
            dit_config = config
            if scheme_for(quantize) is not None:  # each quantized kernel is written as two tensors, qkernel and qscale
                from longcat_jax.models.dit.params import expected_parameters
                from longcat_jax.quantization.policy import is_quantized_kernel

                count += sum(map(is_quantized_kernel, expected_parameters(config)))
            if calibration is None:
                tensors = quantize_tensors(tensors, quantize, source=str(folder))
            else:
                from longcat_jax.models.dit.calibration import gptq_tensors

                finished = finished_tensors(resume_into / DIT) if resume_into is not None else ()
                tensors = gptq_tensors(tensors, config, quantize, _calibration_inputs(calibration, config),
                                       source=str(folder), progress=progress, finished=finished)
            if folder.name == FASTVIDEO_DIT:
                logger.info("%s: FastVideo's layout of the DiT, converted to %s/", folder, DIT)
        jobs.append(_Job(part, folder.name, Path(part), config_dict, _primed(tensors), count, ckpt))
    loras = lora_sources(src)
    if loras:
        from longcat_jax.models.dit.fastvideo_lora_params import dit_lora_tensors, lora_tensor_count

        for name, file in loras.items():
            ckpt = SafetensorsCheckpoint(file)
            jobs.append(_Job(f"{LORA_DIR}/{name}", LORA_DIR, converted_lora_dir(Path(), name),
                             {**LORA_CONFIG, "source": file.relative_to(src / LORA_DIR).as_posix()},
                             _primed(dit_lora_tensors(ckpt, dit_config)), lora_tensor_count(ckpt), ckpt))
    return jobs


def _copy(folder: Path, target: Path) -> None:
    """Copies `folder` to `target` through `<target>.partial`, so a copy cut short never looks complete."""
    tmp = target.with_name(target.name + PARTIAL_SUFFIX)
    if tmp.exists():
        shutil.rmtree(tmp)
    with writing(target, fix=_RESUME_FIX):
        shutil.copytree(folder, tmp)
    tmp.rename(target)


def _check_space(dst: Path, jobs, copies: list[Path], *, resume: bool) -> None:
    """Refuses, before writing, a destination whose disk cannot hold what is left to write (the tensors' size:
    Orbax's compression saves little on weights)."""
    needed = 0
    for job in jobs:
        if not (resume and is_converted(dst / job.target)):
            needed += job.ckpt.nbytes() - (partial_bytes(dst / job.target) if resume else 0)
    needed += sum(f.stat().st_size for folder in copies for f in folder.rglob("*") if f.is_file())
    require_space(dst, needed, what="the conversion", fix="free some space or choose a folder on another disk")


def _refuse_converted_source(src: Path) -> None:
    """Refuses a source that is already our conversion (a part or LoRA with our index), which would otherwise be
    reported as a download lacking its safetensors files."""
    loras = sorted((src / LORA_DIR).glob("*"))  # (none when there is no lora/)
    converted = [p.relative_to(src).as_posix() for p in [*(src / part for part in MODEL_PARTS), *loras]
                 if is_converted(p)]
    if converted:
        raise CheckpointError(f"{src} is already a converted checkpoint ({', '.join(converted)} converted); use it as "
                              "--model-path as it is, or pass the original download as the source to convert again")


def _settings(quantize, calibration) -> dict[str, str]:
    """What a resumed conversion must repeat (the calibration only when there is one, so conversions begun before it
    existed still resume; a calibration file with its size and modification time, as the source's files)."""
    settings = {"quantize": quantize or "none"}
    if calibration is not None:
        settings["calibration"] = str(getattr(calibration, "source", calibration))
        if isinstance(calibration, str | Path) and str(calibration) != RANDOM_CALIBRATION and Path(calibration).is_file():
            # a recorded-inputs file rewritten between the two runs would round the rest differently
            size, modified = destination.file_stamp(Path(calibration))
            settings["calibration"] += f" ({size} bytes, modified {modified} ns)"
    return settings


def convert_checkpoint(src: str | Path, dst: str | Path, *, resume: bool = False, allow_incomplete: bool = False,
                       progress: bool = True, quantize: str | None = None, calibration=None) -> dict[str, Path]:
    """Converts every part of the original checkpoint folder `src` (or FastVideo's conversion of it) into `dst`;
    returns {part: folder}.

    LoRA parts are named `lora/<file stem>` (FastVideo's `lora/distilled/` and `lora/refinement/`: `lora/cfg_step_lora`,
    `lora/refinement_lora`). Raises CheckpointError/ConfigError naming the problem
    (a part a generation run needs missing, unless `allow_incomplete`; an unmapped, missing, misshapen or
    non-float tensor; a truncated, missing or malformed shard; a bad config; a destination holding
    something else, or `src` itself; a `src` already converted; `quantize` without a DiT) before writing.
    `quantize` ('fp8', 'fp8-weight-only' or 'int8') stores the DiT's large Linears quantized with
    per-output-channel scales (load the result with the same `--quantize`); LoRAs stay float.
    `calibration` (with `quantize`): round the quantized kernels by GPTQ (`longcat_jax.models.dit.calibration`) on
    these DiT inputs: 'random' (stand-ins), the path of an .npz file of recorded inputs, or a `CalibrationInputs`;
    None rounds to nearest. The stored format is the same either way.
    `resume` continues an interrupted conversion into `dst` (GPTQ takes the finished blocks as written); without
    it, an unfinished conversion found there is cleared and begun again. `progress` shows a bar per part.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise CheckpointError(f"source {src} is not a folder; pass the downloaded LongCat-Video folder")
    if scheme_for(quantize) is None and calibration is not None:  # an unknown mode is refused before anything is read
        raise ConfigError("calibration rounds quantized weights; pass a quantize mode with it (--quantize int8 or fp8)")
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"destination {dst} is the source folder; the conversion is written beside the "
                              f"download, not into it: pass a new folder as DST (e.g. {src.resolve().name}-converted)")
    _refuse_converted_source(src)
    if scheme_for(quantize) is not None and not dit_folder(src).is_dir():
        given = f"--quantize {quantize}" + (" and --calibration" if calibration is not None else "")
        raise ConfigError(f"{given} quantize the DiT, but {src} has no {DIT}/ (nor FastVideo's {FASTVIDEO_DIT}/); "
                          "drop them to convert the rest (LoRAs are stored in float either way)")
    jobs = _plan(src, quantize, calibration, progress=progress, resume_into=dst if resume else None)
    copies = [src / name for name in COPIED_PARTS if (src / name).is_dir()]
    if not jobs and not copies:
        raise CheckpointError(
            f"{src} has none of {sorted(MODEL_PARTS)} (or FastVideo's {FASTVIDEO_DIT}), lora/*.safetensors, "
            f"{list(COPIED_PARTS)}; is it a LongCat-Video checkpoint folder?"
        )
    missing = missing_parts(src)
    if missing and not allow_incomplete:
        raise CheckpointError(
            f"{src} lacks {', '.join(missing)}, which every generation run needs ({', '.join(REQUIRED_PARTS)}), so "
            "`generate` would refuse the converted folder; download the missing parts, or pass --allow-incomplete "
            "(allow_incomplete=True) to convert only what is there"
        )
    parts = sorted({job.source for job in jobs} | {f.name for f in copies})
    target = destination.prepare(dst, src, destination.source_fingerprint(src, parts), resume=resume,
                                 settings=_settings(quantize, calibration))
    done: dict[str, Path] = {}
    try:
        _check_space(dst, jobs, copies, resume=resume)
        for job in jobs:
            if resume and is_converted(dst / job.target):
                logger.info("%s: converted before, kept", job.name)
                done[job.name] = dst / job.target
                continue
            (dst / job.target).parent.mkdir(parents=True, exist_ok=True)
            done[job.name] = save_part(job.tensors, dst / job.target, job.config, total=job.count, desc=job.name,
                                       progress=progress, resume=resume)
        for folder in copies:
            if not (resume and (dst / folder.name).is_dir()):
                _copy(folder, dst / folder.name)
            done[folder.name] = dst / folder.name
    except BaseException:
        destination.clean_after_failure(target)
        raise
    destination.finish(target)
    logger.info("converted %s into %s", sorted(done), dst)
    return done
