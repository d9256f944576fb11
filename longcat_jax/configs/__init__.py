"""The config files shipped inside the package, so that any install has them (a wheel, a non-editable install, a
zip): the BSA presets in `bsa/*.json`, found by name.

The repository's top-level `configs/bsa` is a link to `longcat_jax/configs/bsa`: one copy of each preset, read by
path from a clone (`--bsa-config configs/bsa/config_720p_fast.json`) and by name from anywhere
(`--bsa-config fast`).

A preset answers to its file name (`config_720p_balanced.json`), its stem (`config_720p_balanced`), the stem
without `config_` (`720p_balanced`) and, for the 720p ones, without the resolution as well (`balanced`).
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

BSA_FOLDER = "bsa"
_PREFIX = "config_"
_DEFAULT_RESOLUTION = "720p_"  # the refinement's size: its presets go by their short names


def bsa_preset_files() -> dict[str, Traversable]:
    """Every packaged BSA preset: file name -> the file (readable with `.read_text()` in any install)."""
    folder = resources.files(__name__).joinpath(BSA_FOLDER)
    return {entry.name: entry for entry in sorted(folder.iterdir(), key=lambda e: e.name) if entry.name.endswith(".json")}


def bsa_preset_names() -> dict[str, str]:
    """Every name a preset answers to -> its file name."""
    names: dict[str, str] = {}
    for file_name in bsa_preset_files():
        stem = file_name.removesuffix(".json")
        for name in (file_name, stem, stem.removeprefix(_PREFIX), _short_name(file_name)):
            names.setdefault(name, file_name)
    return names


def short_preset_names() -> dict[str, str]:
    """The short name of each preset -> its file name (`balanced` -> `config_720p_balanced.json`): what error
    messages and `--help` list."""
    return {_short_name(file_name): file_name for file_name in bsa_preset_files()}


def find_bsa_preset(name: str) -> Traversable | None:
    """The packaged preset called `name` (any of its names), or None."""
    file_name = bsa_preset_names().get(name)
    return None if file_name is None else bsa_preset_files()[file_name]


def _short_name(file_name: str) -> str:
    """`config_720p_balanced.json` -> `balanced`, `config_480p_no_bsa.json` -> `480p_no_bsa`."""
    return file_name.removesuffix(".json").removeprefix(_PREFIX).removeprefix(_DEFAULT_RESOLUTION)
