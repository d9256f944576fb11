"""Load-time cost of the per-file CRC32 check of our converted format, on a synthetic converted DiT.

Usage (from the repository root): PYTHONPATH=. python benchmarks/checkpoint_checksum_cost.py WORKDIR [--depth 12]
Converts a random bf16 DiT (hidden 1024) into WORKDIR, then times `iter_part` over it (all tensors read)
and `load_dit` with the check and with the check replaced by a no-op, alternating, 3 rounds each (warm
page cache).
WORKDIR is deleted at the end.
"""

import argparse
import shutil
import time
from pathlib import Path

import jax.numpy as jnp  # noqa: E402

from convert.api import convert_checkpoint  # noqa: E402
from longcat_jax.checkpoint import orbax_chunks  # noqa: E402
from longcat_jax.models.dit import load_dit  # noqa: E402
from tests.helpers.dit_checkpoints import dit_config, write_original_dit  # noqa: E402


def _read(part: Path) -> float:
    start = time.perf_counter()
    for _ in orbax_chunks.iter_part(part):
        pass
    return time.perf_counter() - start


def _load_dit(part: Path) -> float:
    start = time.perf_counter()
    load_dit(part, dtype=jnp.bfloat16)
    return time.perf_counter() - start


def _compare(part: Path, load, label: str) -> None:
    verify = orbax_chunks.verify_folder
    load(part)  # warm the page cache, Orbax and JAX
    checked, unchecked = [], []
    for _ in range(3):
        orbax_chunks.verify_folder = verify
        checked.append(load(part))
        orbax_chunks.verify_folder = lambda *a, **k: None
        unchecked.append(load(part))
    orbax_chunks.verify_folder = verify
    best_c, best_u = min(checked), min(unchecked)
    print(f"{label}: with checksums {best_c:.2f} s, without {best_u:.2f} s (best of 3 each): +{best_c - best_u:.2f} s "
          f"(+{100 * (best_c - best_u) / best_u:.0f}%); all runs with {[round(t, 2) for t in checked]}, "
          f"without {[round(t, 2) for t in unchecked]}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("work")
    parser.add_argument("--depth", type=int, default=12)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True)
    try:
        write_original_dit(work / "src" / "dit", dit_config(hidden_size=1024, depth=args.depth, num_heads=8))
        convert_checkpoint(work / "src", work / "dst", allow_incomplete=True, progress=False)
        part = work / "dst" / "dit"
        on_disk = sum(f.stat().st_size for f in (part / "chunks").rglob("*") if f.is_file())
        print(f"converted DiT: {on_disk / 2**20:.0f} MiB on disk in {len(list((part / 'chunks').iterdir()))} chunks")
        _compare(part, _read, "iter_part (read every tensor, nothing else)")
        _compare(part, _load_dit, "load_dit (bf16, CPU)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
