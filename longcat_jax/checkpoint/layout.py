"""The LongCat-Video checkpoint folder: which parts it has and where each lives (one definition).

    ROOT/dit/            DiT: config.json + safetensors shards (original) or our chunked Orbax part
    ROOT/vae/            Wan 2.1 VAE, likewise
    ROOT/text_encoder/   UMT5 encoder, likewise
    ROOT/tokenizer/      tokenizer.json or spiece.model (copied as is by the converter)
    ROOT/scheduler/      scheduler_config.json (copied as is)
    ROOT/lora/NAME.safetensors (original) or ROOT/lora/NAME/ (converted): cfg_step_lora, refinement_lora

The original download and the converter's output share this layout, so every loader takes either.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

from longcat_jax.errors import CheckpointError

DIT = "dit"
VAE = "vae"
TEXT_ENCODER = "text_encoder"
TOKENIZER = "tokenizer"
SCHEDULER = "scheduler"
LORA_DIR = "lora"

MODEL_PARTS = (DIT, VAE, TEXT_ENCODER)  # converted tensor by tensor
COPIED_PARTS = (TOKENIZER, SCHEDULER)  # copied unchanged by the converter
REQUIRED_PARTS = (DIT, VAE, TEXT_ENCODER, TOKENIZER)  # what every generation run needs
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")  # a tokenizer folder holds at least one of them

DISTILL_LORA = "cfg_step_lora"
REFINE_LORA = "refinement_lora"


def names_a_file_inside(name: str) -> bool:
    """True if `name`, a file name read from a checkpoint's own metadata (a shard in a safetensors index, a
    file in our index), is a relative path that cannot leave the folder it is joined to. Symlinks are not
    followed: the rule is about the names a checkpoint gives, not where the files they name are stored."""
    pure = PurePosixPath(name)
    return bool(name) and not pure.is_absolute() and ".." not in pure.parts and not PureWindowsPath(name).drive


def lora_path(root: Path, name: str) -> Path | None:
    """The checkpoint's LoRA `name`: `lora/<name>.safetensors`, or `lora/<name>/` converted; None if absent."""
    for candidate in (root / LORA_DIR / f"{name}.safetensors", root / LORA_DIR / name):
        if candidate.exists():
            return candidate
    return None


def converted_lora_dir(root: Path, name: str) -> Path:
    """Where the converter writes the LoRA `name` (the stem of the original's file)."""
    return root / LORA_DIR / name


def missing_parts(root: Path) -> list[str]:
    """The parts every generation run needs that `root` lacks (a tokenizer folder without its files counts)."""
    missing = [part for part in REQUIRED_PARTS if not (root / part).is_dir()]
    if (root / TOKENIZER).is_dir() and not any((root / TOKENIZER / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"{TOKENIZER}/{' or '.join(TOKENIZER_FILES)}")
    return missing


def check_checkpoint(root: str | Path, *, loras: Sequence[str] = ()) -> Path:
    """Refuses a checkpoint folder that lacks a part the run needs, naming it; returns the folder."""
    path = Path(root)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} not found; pass --model-path to a LongCat-Video download")
    missing = missing_parts(path)
    missing += [f"{LORA_DIR}/{name}.safetensors" for name in loras if lora_path(path, name) is None]
    if missing:
        raise CheckpointError(
            f"checkpoint folder {path} lacks {', '.join(missing)}; download the complete LongCat-Video checkpoint "
            f"(it has {', '.join(REQUIRED_PARTS)}, {SCHEDULER} and {LORA_DIR}/) or convert it with `python -m convert`"
        )
    return path
