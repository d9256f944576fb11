"""A checkpoint named by its Hugging Face hub id (`meituan-longcat/LongCat-Video`), resolved to a local folder.

`--model-path` and `LongCatPipeline.from_pretrained` take a folder or a hub id. `resolve_model_path` returns an
existing folder as it is (a local folder always wins over a hub id of the same text) and downloads a hub id, or
finds it in the hub cache, through `huggingface_hub.snapshot_download`: the usual cache (`HF_HOME`,
`HF_HUB_CACHE`), `HF_HUB_OFFLINE=1`, `HF_TOKEN` and `hf auth login` all apply. Only the checkpoint's parts are
fetched (`dit/` or FastVideo's `transformer/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`, `lora/`), not
the rest of the repository.
Text that is neither an existing path nor of the form `owner/name` is refused before anything is fetched.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from longcat_jax.checkpoint.layout import (
    DIT,
    FASTVIDEO_DIT,
    LORA_DIR,
    SCHEDULER,
    TEXT_ENCODER,
    TOKENIZER,
    VAE,
)
from longcat_jax.errors import CheckpointError

logger = logging.getLogger(__name__)

RELEASED_REPO = "meituan-longcat/LongCat-Video"
FASTVIDEO_REPO = "FastVideo/LongCat-Video-T2V-Diffusers"  # FastVideo's conversion (layout: checkpoint.layout)
CHECKPOINT_PATTERNS = tuple(
    f"{part}/*" for part in (DIT, FASTVIDEO_DIT, VAE, TEXT_ENCODER, TOKENIZER, SCHEDULER, LORA_DIR)
)
# The hub's rule for an owner or repository name: letters, digits, '-', '_', '.'; no leading or trailing '-'
# or '.', no '--' or '..'; at most 96 characters.
_NAME = r"(?!.*(?:--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HUB_ID = re.compile(rf"{_NAME}/{_NAME}")


def hub_id(model_path: str | os.PathLike) -> str | None:
    """`model_path` as a hub id (`owner/name`), or None where it cannot be one (a single name, an absolute or
    relative path such as `./x` or `~/x`, more than one `/`)."""
    text = os.fspath(model_path).replace(os.sep, "/")
    return text if _HUB_ID.fullmatch(text) else None


def resolve_model_path(model_path: str | os.PathLike) -> Path:
    """The checkpoint folder `model_path` names: itself where it exists, else the hub snapshot of the hub id it
    is (downloaded into the hub cache on first use, found there afterwards)."""
    path = Path(model_path).expanduser()
    if path.exists():
        return path
    repo_id = hub_id(model_path)
    if repo_id is None:
        raise CheckpointError(
            f"checkpoint folder {os.fspath(model_path)} not found, and it is not a Hugging Face hub id (owner/name); "
            f"pass the folder of a LongCat-Video download or a hub id such as {RELEASED_REPO}"
        )
    return download_checkpoint(repo_id)


def download_checkpoint(repo_id: str) -> Path:
    """The local snapshot folder of the hub repository `repo_id`, holding the checkpoint's parts."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    logger.info("Resolving %s on the Hugging Face hub (parts: %s); the first use downloads it into the hub cache",
                repo_id, ", ".join(CHECKPOINT_PATTERNS))
    try:
        folder = snapshot_download(repo_id, allow_patterns=list(CHECKPOINT_PATTERNS))
    except GatedRepoError as err:
        raise CheckpointError(f"{repo_id} is gated on the hub: accept its terms on huggingface.co/{repo_id}, then "
                              f"log in with `hf auth login` (or set HF_TOKEN)") from err
    except RepositoryNotFoundError as err:
        raise CheckpointError(f"no hub repository {repo_id} (or it is private: log in with `hf auth login`); "
                              f"check the id, e.g. {RELEASED_REPO}, or pass a local folder") from err
    except RevisionNotFoundError as err:
        raise CheckpointError(f"{repo_id} has no main revision on the hub; pass a local folder") from err
    except LocalEntryNotFoundError as err:
        raise CheckpointError(
            f"{repo_id} is not in the hub cache and cannot be downloaded now (offline: HF_HUB_OFFLINE=1, or no "
            f"network); download it where the hub is reachable (`hf download {repo_id}`), or pass a local folder"
        ) from err
    except (HfHubHTTPError, OSError) as err:
        raise CheckpointError(f"downloading {repo_id} from the hub failed ({err}); check the network and the "
                              f"disk space of the hub cache (HF_HOME), then run again: finished files are kept") from err
    logger.info("Checkpoint %s: %s", repo_id, folder)
    return Path(folder)
