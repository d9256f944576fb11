"""Where the reference fixtures are: an explicit folder, else `$LONGCAT_FIXTURES`, else the set in the repository.

The repository ships a trimmed set of the original's reference outputs in `tests/fixtures/longcat_ref` (see its
README.md), so a plain clone runs every parity check. `LONGCAT_FIXTURES` points at another set, such as the full
one the trimmed set was cut from. Wheels do not carry the fixtures (they are test data): an installed package
needs `--fixtures` or `LONGCAT_FIXTURES`.
"""

from __future__ import annotations

import os
from pathlib import Path

FIXTURES_ENV = "LONGCAT_FIXTURES"
REPOSITORY_FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "longcat_ref"
# the fix named when the resolved folder does not exist
MISSING_FIXTURES_HINT = (f"set {FIXTURES_ENV} to a longcat_ref fixture folder; a clone of the repository has one in "
                         "tests/fixtures/longcat_ref (wheels carry none)")


def resolve_fixtures_dir(explicit: str | Path | None = None, default: Path = REPOSITORY_FIXTURES) -> Path:
    """`explicit` if given, else `$LONGCAT_FIXTURES` if set and not empty, else `default`; existence unchecked."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(FIXTURES_ENV)
    return Path(from_env) if from_env else default
