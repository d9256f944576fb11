"""`python -m convert SRC DST`: convert an original LongCat-Video checkpoint folder into our format."""

from __future__ import annotations

import argparse
import logging
import sys

from convert.api import convert_checkpoint
from longcat_jax.errors import LongCatError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m convert",
        description="Convert an original LongCat-Video checkpoint (dit/, vae/, text_encoder/, lora/*.safetensors, "
        "tokenizer/, scheduler/) into Orbax checkpoints that longcat_jax loads directly. Streams one block at a "
        "time; dtypes are kept.",
    )
    parser.add_argument("src", help="the downloaded LongCat-Video folder")
    parser.add_argument("dst", help="a new folder for the converted checkpoint")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax reports every save at INFO
    try:
        done = convert_checkpoint(args.src, args.dst)
    except LongCatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for part, path in done.items():
        print(f"{part}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
