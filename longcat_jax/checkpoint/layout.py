"""The LongCat-Video checkpoint folder: which parts it has and where each lives (one definition).

    ROOT/dit/            DiT: config.json + safetensors shards (original) or our chunked Orbax part
    ROOT/vae/            Wan 2.1 VAE, likewise
    ROOT/text_encoder/   UMT5 encoder, likewise
    ROOT/tokenizer/      tokenizer.json or spiece.model (copied as is by the converter)
    ROOT/scheduler/      scheduler_config.json (copied as is)
    ROOT/lora/NAME.safetensors (original) or ROOT/lora/NAME/ (converted): cfg_step_lora, refinement_lora

The original download and the converter's output share this layout, so every loader takes either.

FastVideo's conversion of LongCat-Video (its `scripts/checkpoint_conversion/longcat_to_fastvideo.py`, and the
hub's FastVideo/LongCat-Video-T2V-Diffusers) has another layout of the same parts:

    ROOT/transformer/    the DiT in FastVideo's names (q/k/v split, embedders renamed): config.json + safetensors
    ROOT/vae/, text_encoder/, tokenizer/, scheduler/     as in the original (copied unchanged by FastVideo)
    ROOT/lora/distilled/cfg_step_lora.safetensors, ROOT/lora/refinement/refinement_lora.safetensors  (FastVideo's
                         LoRA names), one folder per LoRA
    ROOT/model_index.json  diffusers' list of the parts (not needed here)

`dit_folder` finds the DiT in either; the DiT's tensor names are told apart by `models/dit/fastvideo_params`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

from longcat_jax.errors import CheckpointError

DIT = "dit"
FASTVIDEO_DIT = "transformer"  # FastVideo's folder of the DiT
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
FASTVIDEO_LORA_DIRS = {DISTILL_LORA: "distilled", REFINE_LORA: "refinement"}  # FastVideo's lora/<folder>/ of each


def names_a_file_inside(name: str) -> bool:
    """True if `name`, a file name read from a checkpoint's own metadata (a shard in a safetensors index, a
    file in our index), is a relative path that cannot leave the folder it is joined to. Symlinks are not
    followed: the rule is about the names a checkpoint gives, not where the files they name are stored."""
    pure = PurePosixPath(name)
    return bool(name) and not pure.is_absolute() and ".." not in pure.parts and not PureWindowsPath(name).drive


def dit_folder(root: str | Path) -> Path:
    """The folder of the checkpoint's DiT: `dit/` (the original's layout and ours) or `transformer/` (FastVideo's).
    With neither, `dit/` (for the messages of whoever finds it missing); with both, a CheckpointError."""
    root = Path(root)
    ours, fastvideo = root / DIT, root / FASTVIDEO_DIT
    if ours.is_dir() and fastvideo.is_dir():
        raise CheckpointError(
            f"checkpoint folder {root} holds both {DIT}/ (LongCat's layout) and {FASTVIDEO_DIT}/ (FastVideo's), so "
            "which DiT to load is unclear; move one of them out of the folder"
        )
    return fastvideo if fastvideo.is_dir() else ours


def lora_path(root: Path, name: str) -> Path | None:
    """The checkpoint's LoRA `name`: `lora/<name>.safetensors`, or `lora/<name>/` converted, or in FastVideo's layout
    `lora/<folder>/<name>.safetensors` or else that folder (which then holds the LoRA's one file); None if absent."""
    candidates = [root / LORA_DIR / f"{name}.safetensors", root / LORA_DIR / name]
    if name in FASTVIDEO_LORA_DIRS:
        folder = root / LORA_DIR / FASTVIDEO_LORA_DIRS[name]
        candidates += [folder / f"{name}.safetensors", folder]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return None


def lora_sources(root: Path) -> dict[str, Path]:
    """{LoRA name: safetensors file} of every LoRA file under `root/lora/`, as the converter takes them: the
    original's `lora/NAME.safetensors`, and FastVideo's `lora/FOLDER/*.safetensors` (its `distilled/` and
    `refinement/` named cfg_step_lora and refinement_lora, so `--distill` and `--refine` find them once converted;
    other folders' files by their own names). Two files of one name, or several files in one of FastVideo's
    named folders, are a CheckpointError."""
    folder = root / LORA_DIR
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}

    def add(name: str, file: Path) -> None:
        if name in found:
            raise CheckpointError(f"{found[name]} and {file} would both be the LoRA {name!r}; keep one of them")
        found[name] = file

    for file in sorted(folder.glob("*.safetensors")):
        add(file.stem, file)
    by_folder = {folder_name: name for name, folder_name in FASTVIDEO_LORA_DIRS.items()}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(sub.glob("*.safetensors"))
        if sub.name in by_folder and len(files) > 1:
            raise CheckpointError(f"{sub} holds several LoRA files {[f.name for f in files]}; FastVideo's "
                                  f"{sub.name}/ holds one ({by_folder[sub.name]}): keep that one")
        for file in files:
            add(by_folder.get(sub.name, file.stem), file)
    return found


def converted_lora_dir(root: Path, name: str) -> Path:
    """Where the converter writes the LoRA `name` (its name in `lora_sources`: the stem of the original's file)."""
    return root / LORA_DIR / name


def missing_parts(root: Path) -> list[str]:
    """The parts every generation run needs that `root` lacks (a tokenizer folder without its files counts; the
    DiT may be FastVideo's `transformer/`)."""
    missing = [part for part in REQUIRED_PARTS if not (dit_folder(root) if part == DIT else root / part).is_dir()]
    if (root / TOKENIZER).is_dir() and not any((root / TOKENIZER / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"{TOKENIZER}/{' or '.join(TOKENIZER_FILES)}")
    return missing


def check_checkpoint(root: str | Path, *, loras: Sequence[str] = (),
                     setting: str = "pass --model-path to a LongCat-Video download") -> Path:
    """Refuses a checkpoint folder that lacks a part the run needs, naming it; returns the folder. `setting`: how
    the user names the folder, said where it is missing (training's config sets 'model_path', not a flag)."""
    path = Path(root)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} not found; {setting}")
    missing = missing_parts(path)
    missing += [f"{LORA_DIR}/{name}.safetensors" for name in loras if lora_path(path, name) is None]
    if missing:
        raise CheckpointError(
            f"checkpoint folder {path} lacks {', '.join(missing)}; download the complete LongCat-Video checkpoint "
            f"(it has {', '.join(REQUIRED_PARTS)}, {SCHEDULER} and {LORA_DIR}/; FastVideo's conversion has "
            f"{FASTVIDEO_DIT}/ for {DIT}/) or convert it with `python -m convert`"
        )
    return path
