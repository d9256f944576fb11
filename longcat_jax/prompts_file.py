"""The items of `--prompts FILE`: a text file of one prompt a line, or JSON Lines (`.jsonl`) of one object a line.

    A cat walks across a kitchen                       (a .txt or any other file: each non-blank line a prompt)

    {"prompt": "A cat walks", "seed": 7, "output": "cat.mp4"}                     (a .jsonl file)
    {"prompt": "A dog runs", "negative_prompt": "", "num_frames": 29, "height": 480, "width": 832}

A JSONL object may carry `ITEM_KEYS`, each replacing its flag for that item (`output` is the item's --output-path;
null is the same as leaving the key out); the rest comes from the command line. The whole file is read and checked
before any model loads: a line that is not a JSON object, a key that is not an item key, and a value of the wrong
type are refused together, each with its line number, in one ConfigError. Values of the right type that a run cannot
take (a size that is not a multiple of 16, a missing image) fail their item alone, when the batch plans it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from longcat_jax.errors import ConfigError

JSONL_SUFFIXES = (".jsonl",)
TEXT_KEYS = ("prompt", "negative_prompt", "image", "video", "output")  # strings
INT_KEYS = ("seed", "num_frames", "height", "width")  # integers
ITEM_KEYS = ("prompt", "negative_prompt", "seed", "image", "video", "num_frames", "height", "width", "output")
MAX_PROBLEMS_SHOWN = 20


@dataclasses.dataclass(frozen=True)
class PromptItem:
    """One item: its line in the file (1-based) and the values it gives ({item key: value}); paths as written."""

    line: int
    values: dict[str, Any]

    @property
    def prompt(self) -> str | None:
        return self.values.get("prompt")


def read_prompts_file(path: Path) -> list[PromptItem]:
    """The items of `path` (see the module docstring); refuses a missing or empty file, and every bad JSONL line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompts file {path} not found; --prompts takes a text file (one prompt a line) or a .jsonl "
                          "file (one JSON object a line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ConfigError(f"prompts file {path} is not UTF-8 text ({err}); save it as UTF-8") from err
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise ConfigError(f"prompts file {path} has no prompts; write one prompt a line (or one JSON object a line "
                          "in a .jsonl file)")
    if path.suffix.lower() not in JSONL_SUFFIXES:
        return [PromptItem(number, {"prompt": line.strip()}) for number, line in numbered]
    items, problems = [], []
    for number, line in numbered:
        values, found = _parse_object(line)
        problems += [f"line {number}: {problem}" for problem in found]
        items.append(PromptItem(number, values))
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        raise ConfigError(
            f"prompts file {path}: " + "; ".join(shown) + (f"; and {more} more" if more else "")
            + f"; each line is one JSON object with any of the keys {', '.join(ITEM_KEYS)}"
        )
    return items


def _parse_object(line: str) -> tuple[dict[str, Any], list[str]]:
    """(the item's values, the problems of the line)."""
    try:
        values = json.loads(line)
    except json.JSONDecodeError as err:
        return {}, [f"not valid JSON ({err.msg} at column {err.colno})"]
    if not isinstance(values, dict):
        return {}, [f"expected a JSON object, got {type(values).__name__}"]
    problems = [f"unknown key {key!r}" for key in values if key not in ITEM_KEYS]
    values = {key: value for key, value in values.items() if value is not None}
    for key, value in values.items():
        if key in TEXT_KEYS and not isinstance(value, str):
            problems.append(f"{key!r} must be a string, got {value!r}")
        elif key in INT_KEYS and (not isinstance(value, int) or isinstance(value, bool)):
            problems.append(f"{key!r} must be an integer, got {value!r}")
    return values, problems
