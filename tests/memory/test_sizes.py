"""`--max-device-memory` sizes: the forms accepted, the ones refused (each naming the flag and a valid form)."""

import pytest

from longcat_jax.errors import ConfigError
from longcat_jax.memory.sizes import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GiB", 24 * 2**30),
        ("48GB", 48 * 10**9),
        ("48 gb", 48 * 10**9),
        ("1.5TiB", int(1.5 * 2**40)),
        (".5GiB", 2**29),
        ("512MiB", 512 * 2**20),
        ("4096B", 4096),
        (" 80 GiB ", 80 * 2**30),
        (10**9, 10**9),
    ],
)
def test_sizes_parse_in_binary_and_decimal_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("24", "no unit"),
        ("24G", "GiB or GB"),
        ("24 gigs", "unknown unit"),
        ("GiB", "not a size"),
        ("-1GiB", "not a size"),
        ("0GiB", "at least one byte"),
        ("infGiB", "not a size"),
        ("nan GiB", "not a size"),
        ("1e3GiB", "not a size"),
        ("", "not a size"),
        (0, "must be positive"),
        (-5, "must be positive"),
        (True, "takes a size"),
        (24.0, "takes a size"),
        (None, "takes a size"),
    ],
)
def test_bad_sizes_are_refused_naming_the_flag(text, hint):
    with pytest.raises(ConfigError, match="--max-device-memory") as info:
        parse_size(text)
    assert hint in str(info.value)


def test_sizes_print_in_binary_units():
    assert format_size(512) == "512 B"
    assert format_size(1536) == "1.50 KiB"
    assert format_size(24 * 2**30) == "24.00 GiB"
    assert format_size(3 * 2**40) == "3.00 TiB"
    assert parse_size(format_size(24 * 2**30).replace(" ", "")) == 24 * 2**30
