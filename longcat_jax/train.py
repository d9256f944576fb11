"""`python -m longcat_jax.train`: LoRA fine-tuning of LongCat-Video from a folder of captioned clips.

    python -m longcat_jax.train --config train.json --prepare     # encode the clips once (VAE + UMT5) into the cache
    python -m longcat_jax.train --config train.json               # train; checkpoints and the LoRA in output_dir
    python -m longcat_jax.train --config train.json --resume      # continue from the newest checkpoint
    python -m longcat_jax.train --config train.json --until-step 500   # stop at step 500 (with a checkpoint)
    python -m longcat_jax.generate --model-path M --lora OUTPUT/lora.safetensors --prompt "..."

The config (`configs/train/example.json`, documented in `longcat_jax/training/config.py` and the README) is read
and checked first; a wrong key or value, a missing data folder, a stale cache or a BSA setting that does not
tile the clips' size is refused with the fix named before any model is loaded. Several hosts: start the same
command on each with `LONGCAT_COORDINATOR`, `LONGCAT_NUM_PROCESSES`, `LONGCAT_PROCESS_ID` (see
`longcat_jax/sharding/README.md`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from longcat_jax.cli_logging import setup_cli_logging
from longcat_jax.errors import InputError, LongCatError
from longcat_jax.sharding import initialize_distributed
from longcat_jax.training.config import load_train_config
from longcat_jax.training.loop import run_training
from longcat_jax.training.prepare import prepare_dataset

logger = logging.getLogger("longcat_jax.train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m longcat_jax.train",
        description="Train a LoRA for LongCat-Video on a folder of videos with captions (see "
        "configs/train/example.json). Run once with --prepare to encode the clips, then without it to train.",
    )
    parser.add_argument("--config", type=Path, required=True, help="training config JSON")
    parser.add_argument("--prepare", action="store_true",
                        help="encode the data folder's clips (VAE latents, UMT5 captions) into the cache and exit")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    parser.add_argument("--until-step", type=int, metavar="N",
                        help="stop (with a checkpoint) after N optimiser steps; --resume continues later")
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    args = build_parser().parse_args(argv)
    try:
        if os.environ.get("LONGCAT_COORDINATOR"):
            initialize_distributed()  # one process per host; before anything else touches JAX's devices
        if args.until_step is not None and args.until_step < 1:
            raise InputError(f"--until-step must be a positive step count, got {args.until_step}")
        config = load_train_config(args.config)
        if args.prepare:
            report = prepare_dataset(config)
            print(f"Prepared {report.encoded + report.reused} clips in {report.cache_dir} "
                  f"({report.encoded} encoded now, {report.reused} reused, {len(report.skipped)} skipped)")
            return 0
        result = run_training(config, resume=args.resume, config_source=str(args.config), until_step=args.until_step)
    except LongCatError as err:
        logger.error("%s", err)
        return 2
    except KeyboardInterrupt:
        logger.error("Interrupted")
        return 130
    if result.lora_path is not None:
        print(f"LoRA: {result.lora_path}  (python -m longcat_jax.generate ... --lora {result.lora_path})")
    else:
        print(f"Stopped after step {result.final_step}; continue with --resume")
    return 0


if __name__ == "__main__":
    sys.exit(main())
