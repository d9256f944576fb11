"""`convert_checkpoint(src, dst)`: an original LongCat-Video checkpoint folder -> our converted folder.

Each part present in `src` is converted with the same name-mapping generator the loaders use:
`dit/` (sharded safetensors), `vae/`, `text_encoder/`, and every `lora/*.safetensors` (to
`lora/<name>/`); `tokenizer/` and `scheduler/` are copied unchanged. Every part is checked (configs
parsed, shards present and complete, names and shapes mapped) before anything is written, tensors
stream one group at a time, and dtypes are kept (bf16 stays bf16).
"""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from convert.checkpoint import save_part
from convert.safetensors_io import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError
from longcat_jax.json_io import read_json_object

logger = logging.getLogger(__name__)

COPIED_PARTS = ("tokenizer", "scheduler")
LORA_CONFIG = {"format": "longcat-dit-lora"}


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, "config", missing_error=CheckpointError,
                            hint="every model part needs its config.json")


def _dit_part(folder: Path):
    from convert.dit import dit_tensors
    from longcat_jax.models.dit.config import DiTConfig

    config = DiTConfig.from_json(folder / "config.json")
    return config, dit_tensors(SafetensorsCheckpoint(folder), config)


def _vae_part(folder: Path):
    from convert.vae import vae_tensors
    from longcat_jax.models.vae.config import VAEConfig

    config = VAEConfig.from_json(folder / "config.json")
    return config, vae_tensors(SafetensorsCheckpoint(folder), config)


def _text_encoder_part(folder: Path):
    from convert.text_encoder import text_encoder_tensors
    from longcat_jax.models.text_encoder.config import UMT5Config

    config = UMT5Config.from_json(folder / "config.json")
    return config, text_encoder_tensors(SafetensorsCheckpoint(folder), config)


MODEL_PARTS: dict[str, Callable[[Path], tuple[Any, Iterator]]] = {
    "dit": _dit_part,
    "vae": _vae_part,
    "text_encoder": _text_encoder_part,
}


def _primed(tensors: Iterator) -> Iterator:
    """Runs a generator up to its first tensor (where its whole-header checks happen) and returns the
    same stream, so refusals come before anything is written."""
    try:
        first = next(tensors)
    except StopIteration:
        return iter(())
    return itertools.chain([first], tensors)


def convert_checkpoint(src: str | Path, dst: str | Path) -> dict[str, Path]:
    """Converts every part of the original checkpoint folder `src` into `dst`; returns {part: folder}.

    LoRA parts are named `lora/<file stem>`. Raises CheckpointError/ConfigError naming the problem
    (unmapped, missing or misshapen tensor, truncated or missing shard, bad config) before writing.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise CheckpointError(f"source {src} is not a folder; pass the downloaded LongCat-Video folder")
    if dst.exists() and any(dst.iterdir()):
        raise CheckpointError(f"destination {dst} exists and is not empty; choose a new folder")

    jobs: list[tuple[str, Path, dict[str, Any], Iterator, int]] = []
    dit_config = None
    for part, make in MODEL_PARTS.items():
        folder = src / part
        if not folder.is_dir():
            continue
        config, tensors = make(folder)
        if part == "dit":
            dit_config = config
        count = len(SafetensorsCheckpoint(folder).names())
        jobs.append((part, dst / part, _read_json(folder / "config.json"), _primed(tensors), count))
    lora_files = sorted((src / "lora").glob("*.safetensors")) if (src / "lora").is_dir() else []
    if lora_files:
        from convert.lora import lora_tensors

        for file in lora_files:
            ckpt = SafetensorsCheckpoint(file)
            jobs.append((f"lora/{file.stem}", dst / "lora" / file.stem, {**LORA_CONFIG, "source": file.name},
                         _primed(lora_tensors(ckpt, dit_config)), len(ckpt.names())))
    copies = [src / name for name in COPIED_PARTS if (src / name).is_dir()]
    if not jobs and not copies:
        raise CheckpointError(
            f"{src} has none of {sorted(MODEL_PARTS)}, lora/*.safetensors, {list(COPIED_PARTS)}; "
            "is it a LongCat-Video checkpoint folder?"
        )

    done: dict[str, Path] = {}
    dst.mkdir(parents=True, exist_ok=True)
    for part, target, config_dict, tensors, count in jobs:
        target.parent.mkdir(parents=True, exist_ok=True)
        done[part] = save_part(tensors, target, config_dict, total=count, desc=part)
    for folder in copies:
        shutil.copytree(folder, dst / folder.name)
        done[folder.name] = dst / folder.name
    logger.info("converted %s into %s", sorted(done), dst)
    return done
