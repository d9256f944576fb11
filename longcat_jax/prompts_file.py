"""The items of `--prompts FILE`: a text file of one prompt a line, or JSON of one object an item.

    A cat walks across a kitchen                       (a .txt or any other file: each non-blank line a prompt)

    {"prompt": "A cat walks", "seed": 7, "output": "cat.mp4"}                     (a .jsonl or .json file)
    {"prompt": "A dog runs", "negative_prompt": "", "num_frames": 29, "height": 480, "width": 832}
    {"prompt": "A woman slices bread", "segment_prompts": ["She pours milk", "She drinks it"]}     (--task long)

    [{"prompt": "A cat walks", "seed": 7},                                        (a .json file)
     {"prompt": "A dog runs"}]

A .jsonl file is JSON Lines: one object a line. A .json file is either a JSON array of objects (or one object), or,
when it is not one JSON document, JSON Lines; a .json file that starts as an array but is not valid JSON is refused
where it breaks. Each item is named by its line in the file (an array's items by the line each starts on). A text
file's line that is a JSON object is read as a prompt as written, with a warning (a JSON file misnamed .txt).

A JSON object may carry `ITEM_KEYS`, each replacing its flag for that item (`output` is the item's --output-path;
null is the same as leaving the key out); the rest comes from the command line. The whole file is read and checked
before any model loads: an item that is not a JSON object, a key that is not an item key, and a value of the wrong
type are refused together, each with its line number, in one ConfigError. Values of the right type that a run cannot
take (a size that is not a multiple of 16, a missing image) fail their item alone, when the batch plans it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

from longcat_jax.errors import ConfigError

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl",)
JSON_SUFFIXES = (".json",)
TEXT_KEYS = ("prompt", "negative_prompt", "image", "video", "output")  # strings
INT_KEYS = ("seed", "num_frames", "height", "width")  # integers
LIST_KEYS = ("segment_prompts",)  # lists of strings (--task long: each continuation segment's prompt)
ITEM_KEYS = ("prompt", "negative_prompt", "seed", "image", "video", "num_frames", "height", "width", "segment_prompts",
             "output")
MAX_PROBLEMS_SHOWN = 20
BETWEEN_ITEMS = re.compile(r"[ \t\n\r,]*")  # JSON whitespace and the commas between a valid array's items
FORMATS = ("a text file (one prompt a line), a .jsonl file (one JSON object a line) or a .json file (a JSON array of "
           "objects)")


@dataclasses.dataclass(frozen=True)
class PromptItem:
    """One item: its line in the file (1-based) and the values it gives ({item key: value}); paths as written."""

    line: int
    values: dict[str, Any]

    @property
    def prompt(self) -> str | None:
        return self.values.get("prompt")


def read_prompts_file(path: Path) -> list[PromptItem]:
    """The items of `path` (see the module docstring); refuses a missing or empty file, and every bad JSON item."""
    path = Path(path)
    if not path.is_file():
        what = "not found" if not path.exists() else "is not a regular file"
        raise ConfigError(f"prompts file {path} {what}; --prompts takes {FORMATS}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not prompt text
    except UnicodeDecodeError as err:
        raise ConfigError(f"prompts file {path} is not UTF-8 text ({err}); save it as UTF-8") from err
    numbered = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    suffix = path.suffix.lower()
    if suffix not in JSONL_SUFFIXES + JSON_SUFFIXES:
        _warn_of_json_lines(path, numbered)
        entries = [(number, {"prompt": line.strip()}) for number, line in numbered]
    elif suffix in JSON_SUFFIXES and (document := _json_document(path, text)) is not None:
        entries = document
    else:
        entries = [(number, _loads(line)) for number, line in numbered]
    if not entries:
        raise ConfigError(f"prompts file {path} has no prompts; --prompts takes {FORMATS}")
    items, problems = [], []
    for number, value in entries:
        values, found = _check_item(value)
        problems += [f"line {number}: {problem}" for problem in found]
        items.append(PromptItem(number, values))
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        raise ConfigError(
            f"prompts file {path}: " + "; ".join(shown) + (f"; and {more} more" if more else "")
            + f"; each item is one JSON object with any of the keys {', '.join(ITEM_KEYS)}"
        )
    return items


def _json_document(path: Path, text: str) -> list[tuple[int, Any]] | None:
    """A .json file's items as (line, value): an array's elements, or the one value of a file that is one JSON
    document; None for JSON Lines (several documents, one a line), read line by line. An array that is not valid
    JSON is refused where it breaks (reading it as JSON Lines would report each of its lines instead)."""
    start = len(text) - len(text.lstrip())
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        if not text[start:].startswith("["):
            return None
        raise ConfigError(f"prompts file {path} is not valid JSON ({err.msg} at line {err.lineno} column "
                          f"{err.colno}); a .json file holds a JSON array of objects, or one JSON object a line"
                          ) from err
    line = text.count("\n", 0, start) + 1
    if not isinstance(document, list):
        return [(line, document)]
    decoder, position, entries = json.JSONDecoder(), start + 1, []
    for _ in document:  # the array is valid: its items are found again one by one, for the line each starts on
        item_start = BETWEEN_ITEMS.match(text, position).end()
        line += text.count("\n", position, item_start)
        value, position = decoder.raw_decode(text, item_start)
        entries.append((line, value))
        line += text.count("\n", item_start, position)
    return entries


def _warn_of_json_lines(path: Path, numbered: list[tuple[int, str]]) -> None:
    """Warns when lines of a text file are JSON objects: each is read as a prompt as written, which a file of JSON
    Lines named .txt would not mean."""
    objects = [number for number, line in numbered if isinstance(_loads(line), dict)]
    if objects:
        shown = ", ".join(map(str, objects[:MAX_PROBLEMS_SHOWN])) + (", ..." if len(objects) > MAX_PROBLEMS_SHOWN else "")
        which = f"line {shown} is a JSON object" if len(objects) == 1 else f"lines {shown} are JSON objects"
        logger.warning("prompts file %s: %s, read as a prompt as written (a text file takes one prompt a line); "
                       "to read JSON keys, name the file .jsonl", path, which)


def _loads(line: str) -> Any:
    """The JSON value of one line, or the `json.JSONDecodeError` saying why it is none (`_check_item` reports it)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        return err


def _check_item(value: Any) -> tuple[dict[str, Any], list[str]]:
    """(the item's values, the problems of the item)."""
    if isinstance(value, json.JSONDecodeError):
        return {}, [f"not valid JSON ({value.msg} at column {value.colno})"]
    if not isinstance(value, dict):
        return {}, [f"expected a JSON object, got {type(value).__name__}"]
    problems = [f"unknown key {key!r}" for key in value if key not in ITEM_KEYS]
    values = {key: item for key, item in value.items() if item is not None}
    for key, item in values.items():
        if key in TEXT_KEYS and not isinstance(item, str):
            problems.append(f"{key!r} must be a string, got {item!r}")
        elif key in INT_KEYS and (not isinstance(item, int) or isinstance(item, bool)):
            problems.append(f"{key!r} must be an integer, got {item!r}")
        elif key in LIST_KEYS:
            if not (isinstance(item, list) and all(isinstance(text, str) for text in item)):
                problems.append(f"{key!r} must be a list of strings, got {item!r}")
            else:
                values[key] = tuple(item)
    return values, problems
