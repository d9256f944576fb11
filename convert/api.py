"""`convert_checkpoint(src, dst)`: an original LongCat-Video checkpoint folder -> our converted folder.

Each part present in `src` is converted with the same name-mapping generator the loaders use:
`dit/` (sharded safetensors), `vae/`, `text_encoder/`, and every `lora/*.safetensors` (to
`lora/<name>/`); `tokenizer/` and `scheduler/` are copied unchanged. Every part is checked (the parts
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
from typing import Any

from convert import destination
from longcat_jax.checkpoint.disk import require_space, writing
from longcat_jax.checkpoint.layout import (
    COPIED_PARTS,
    DIT,
    LORA_DIR,
    REQUIRED_PARTS,
    TEXT_ENCODER,
    VAE,
    converted_lora_dir,
    missing_parts,
)
from longcat_jax.checkpoint.orbax_chunks import PARTIAL_SUFFIX, is_converted, partial_bytes, save_part
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError
from longcat_jax.json_io import read_json_object
from longcat_jax.quantization import quantize_tensors, scheme_for

logger = logging.getLogger(__name__)

LORA_CONFIG = {"format": "longcat-dit-lora"}
_RESUME_FIX = "free some space, then run the same command with --resume to continue"


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, "config", missing_error=CheckpointError,
                            hint="every model part needs its config.json")


def _dit_part(folder: Path):
    from longcat_jax.models.dit.config import DiTConfig
    from longcat_jax.models.dit.params import dit_tensors

    config, ckpt = DiTConfig.from_json(folder / "config.json"), SafetensorsCheckpoint(folder)
    return config, ckpt, dit_tensors(ckpt, config)


def _vae_part(folder: Path):
    from longcat_jax.models.vae.config import VAEConfig
    from longcat_jax.models.vae.params import vae_tensors

    config, ckpt = VAEConfig.from_json(folder / "config.json"), SafetensorsCheckpoint(folder)
    return config, ckpt, vae_tensors(ckpt, config)


def _text_encoder_part(folder: Path):
    from longcat_jax.models.text_encoder.config import UMT5Config
    from longcat_jax.models.text_encoder.params import text_encoder_tensors

    config, ckpt = UMT5Config.from_json(folder / "config.json"), SafetensorsCheckpoint(folder)
    return config, ckpt, text_encoder_tensors(ckpt, config)


MODEL_PARTS: dict[str, Callable[[Path], tuple[Any, SafetensorsCheckpoint, Iterator]]] = {
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


def _plan(src: Path, quantize: str | None = None) -> list[tuple[str, Path, dict[str, Any], Iterator, SafetensorsCheckpoint]]:
    """(name, relative target, config dict, checked tensor stream, source) of every model part and LoRA; the DiT's
    stream quantized by `quantize` (a `longcat_jax.quantization` mode), one tensor at a time."""
    jobs = []
    dit_config = None
    for part, make in MODEL_PARTS.items():
        folder = src / part
        if not folder.is_dir():
            continue
        config, ckpt, tensors = make(folder)
        if part == DIT:
            dit_config = config
            tensors = quantize_tensors(tensors, quantize, source=str(folder))
        jobs.append((part, Path(part), _read_json(folder / "config.json"), _primed(tensors), ckpt))
    lora_files = sorted((src / LORA_DIR).glob("*.safetensors")) if (src / LORA_DIR).is_dir() else []
    if lora_files:
        from longcat_jax.models.dit.lora_params import lora_tensors

        for file in lora_files:
            ckpt = SafetensorsCheckpoint(file)
            jobs.append((f"{LORA_DIR}/{file.stem}", converted_lora_dir(Path(), file.stem),
                         {**LORA_CONFIG, "source": file.name}, _primed(lora_tensors(ckpt, dit_config)), ckpt))
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
    for _, relative, _, _, ckpt in jobs:
        if not (resume and is_converted(dst / relative)):
            needed += ckpt.nbytes() - (partial_bytes(dst / relative) if resume else 0)
    needed += sum(f.stat().st_size for folder in copies for f in folder.rglob("*") if f.is_file())
    require_space(dst, needed, what="the conversion", fix="free some space or choose a folder on another disk")


def convert_checkpoint(src: str | Path, dst: str | Path, *, resume: bool = False, allow_incomplete: bool = False,
                       progress: bool = True, quantize: str | None = None) -> dict[str, Path]:
    """Converts every part of the original checkpoint folder `src` into `dst`; returns {part: folder}.

    LoRA parts are named `lora/<file stem>`. Raises CheckpointError/ConfigError naming the problem
    (a part a generation run needs missing, unless `allow_incomplete`; an unmapped, missing, misshapen or
    non-float tensor; a truncated, missing or malformed shard; a bad config; a destination holding
    something else) before writing. `quantize` ('fp8', 'fp8-weight-only' or 'int8') stores the DiT's large Linears
    quantized with per-output-channel scales (load the result with the same `--quantize`); LoRAs stay float.
    `resume` continues an interrupted conversion into `dst`; without it, an
    unfinished conversion found there is cleared and begun again. `progress` shows a bar per part.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise CheckpointError(f"source {src} is not a folder; pass the downloaded LongCat-Video folder")
    scheme_for(quantize)  # an unknown mode is refused before anything is read
    jobs = _plan(src, quantize)
    copies = [src / name for name in COPIED_PARTS if (src / name).is_dir()]
    if not jobs and not copies:
        raise CheckpointError(
            f"{src} has none of {sorted(MODEL_PARTS)}, lora/*.safetensors, {list(COPIED_PARTS)}; "
            "is it a LongCat-Video checkpoint folder?"
        )
    missing = missing_parts(src)
    if missing and not allow_incomplete:
        raise CheckpointError(
            f"{src} lacks {', '.join(missing)}, which every generation run needs ({', '.join(REQUIRED_PARTS)}), so "
            "`generate` would refuse the converted folder; download the missing parts, or pass --allow-incomplete "
            "(allow_incomplete=True) to convert only what is there"
        )
    parts = [*(name for name, *_ in jobs if not name.startswith(LORA_DIR)), *(f.name for f in copies)]
    parts += [LORA_DIR] if any(name.startswith(LORA_DIR) for name, *_ in jobs) else []
    target = destination.prepare(dst, src, destination.source_fingerprint(src, parts), resume=resume,
                                 settings={"quantize": quantize or "none"})
    done: dict[str, Path] = {}
    try:
        _check_space(dst, jobs, copies, resume=resume)
        for part, relative, config_dict, tensors, ckpt in jobs:
            if resume and is_converted(dst / relative):
                logger.info("%s: converted before, kept", part)
                done[part] = dst / relative
                continue
            (dst / relative).parent.mkdir(parents=True, exist_ok=True)
            done[part] = save_part(tensors, dst / relative, config_dict, total=len(ckpt.names()), desc=part,
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
