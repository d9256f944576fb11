"""How fast `load_dit` loads a DiT from original safetensors: tensors/s and GB/s per quantize mode and placement.

    python benchmarks/dit_load.py --small                        # CPU: 4 blocks of 256 (seconds)
    python benchmarks/dit_load.py --depth 4                      # CPU: 4 blocks of the released width (2.3 GB)
    python benchmarks/dit_load.py --depth 12 --folder /dev/shm   # GPU: 12 released blocks (6.9 GB) in RAM
    python benchmarks/dit_load.py --checkpoint /data/longcat/dit # an existing dit/ folder, as it is

Without `--checkpoint` it writes a random-weight `dit/` folder in the original layout (bf16 shards and their index,
`tools/random_checkpoint.py`'s writer and names) into a temporary folder under `--folder` and deletes it at the end.
Each case loads the whole DiT with `load_dit` (quantize none / fp8 / int8; placement `device`: resident on the
default device, `pinned-host`: its pinned host memory, as a memory plan that streams the DiT loads it), waits for
every weight, and prints one line: seconds, tensors/s and GB/s of the checkpoint's bytes. A first line, `read`, only
reads the checkpoint's tensor stream into our layout (no placement): the ceiling the loads approach. FP8 cases are skipped
where the device lacks FP8 compute, pinned-host ones where it has no pinned host memory. The first case also pays
for the model's tracing; `--repeat` loads each case again and keeps the fastest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import jax  # noqa: E402
from jax.sharding import SingleDeviceSharding  # noqa: E402

from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint  # noqa: E402
from longcat_jax.memory.device import PINNED_HOST, has_memory_kind  # noqa: E402
from longcat_jax.models.dit.config import DiTConfig  # noqa: E402
from longcat_jax.models.dit.loading import load_dit  # noqa: E402
from longcat_jax.quantization.device import fp8_compute_supported  # noqa: E402

MODES = ("none", "fp8", "int8")
PLACEMENTS = ("device", "pinned-host")


def write_dit(folder: Path, config: DiTConfig, seed: int = 0) -> None:
    """A random-weight original `dit/` folder of `config` (random_checkpoint's writer: bf16 shards, index, config)."""
    import random_checkpoint as rc

    tensors = rc.dit_tensors(config)
    with ThreadPoolExecutor(rc.WRITERS) as pool:
        pending = []
        rc.write_part(folder, "diffusion_pytorch_model", tensors, rc.Drawer(seed), pool, pending)
        for future in pending:
            future.result()
    (folder / "config.json").write_text(json.dumps({"_class_name": "LongCatVideoTransformer3DModel",
                                                    **config.to_dict()}, indent=2))


def benchmark_config(args) -> DiTConfig:
    import random_checkpoint as rc

    if args.small:
        return rc.small_spec().dit
    return dataclasses.replace(rc.RELEASED_DIT, depth=args.depth)


def placement_sharding(placement: str):
    device = jax.local_devices()[0]
    if placement == "device":
        return None
    if not has_memory_kind(device, PINNED_HOST):
        return False
    return SingleDeviceSharding(device, memory_kind=PINNED_HOST)


def time_read(folder: Path) -> float:
    """Seconds to read every tensor of the stream `load_dit` places (no placement), the loaders' own reader."""
    from longcat_jax.models.dit.fastvideo_params import checkpoint_dit_tensors

    start = time.perf_counter()
    tensors, _ = checkpoint_dit_tensors(SafetensorsCheckpoint(folder), DiTConfig.from_json(folder / "config.json"))
    for _ in tensors:
        pass
    return time.perf_counter() - start


def time_load(folder: Path, mode: str, placement: str, repeat: int) -> float | None:
    """The fastest of `repeat` whole loads, in seconds; None when the case cannot run here."""
    device = jax.local_devices()[0]
    if mode == "fp8" and not fp8_compute_supported(device):
        return None
    sharding = placement_sharding(placement)
    if sharding is False:
        return None
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        dit = load_dit(folder, quantize=None if mode == "none" else mode, device=sharding)
        jax.block_until_ready(jax.tree.leaves(dit))
        best = min(best, time.perf_counter() - start)
        del dit
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="an existing dit/ folder (config.json and safetensors)")
    parser.add_argument("--small", action="store_true", help="the small CPU DiT (4 blocks of 256) instead of --depth")
    parser.add_argument("--depth", type=int, default=12, help="blocks of the released width written (default 12)")
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the written checkpoint goes (deleted at the end); /dev/shm keeps it in RAM")
    parser.add_argument("--modes", default=",".join(MODES), help=f"quantize modes, from {MODES}")
    parser.add_argument("--placements", default=",".join(PLACEMENTS), help=f"from {PLACEMENTS}")
    parser.add_argument("--repeat", type=int, default=1, help="loads per case; the fastest is kept")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    modes, placements = args.modes.split(","), args.placements.split(",")
    for value, allowed in [*((m, MODES) for m in modes), *((p, PLACEMENTS) for p in placements)]:
        if value not in allowed:
            parser.error(f"{value!r} is not one of {allowed}")

    scratch = None
    if args.checkpoint is None:
        scratch = Path(tempfile.mkdtemp(prefix="dit_load_", dir=args.folder))
        folder = scratch / "dit"
        start = time.perf_counter()
        write_dit(folder, benchmark_config(args))
        print(f"wrote {folder} in {time.perf_counter() - start:.1f} s", flush=True)
    else:
        folder = args.checkpoint
    try:
        ckpt = SafetensorsCheckpoint(folder)
        count, gigabytes = len(ckpt.names()), ckpt.nbytes() / 1e9
        print(f"{folder}: {count} tensors, {gigabytes:.2f} GB; device {jax.local_devices()[0].device_kind}", flush=True)
        seconds = time_read(folder)
        results = [{"placement": "read", "quantize": "none", "seconds": round(seconds, 2),
                    "tensors_per_s": round(count / seconds, 1), "gb_per_s": round(gigabytes / seconds, 3)}]
        print(f"{'read':12s} (no placement)   {seconds:7.2f} s  {count / seconds:7.1f} tensors/s  "
              f"{gigabytes / seconds:6.3f} GB/s", flush=True)
        for placement in placements:
            for mode in modes:
                seconds = time_load(folder, mode, placement, args.repeat)
                if seconds is None:
                    print(f"{placement:12s} quantize={mode:5s} skipped (not supported on this device)", flush=True)
                    continue
                row = {"placement": placement, "quantize": mode, "seconds": round(seconds, 2),
                       "tensors_per_s": round(count / seconds, 1), "gb_per_s": round(gigabytes / seconds, 3)}
                results.append(row)
                print(f"{placement:12s} quantize={mode:5s} {seconds:7.2f} s  {row['tensors_per_s']:7.1f} tensors/s  "
                      f"{row['gb_per_s']:6.3f} GB/s", flush=True)
        record = {"checkpoint": str(folder), "tensors": count, "gigabytes": round(gigabytes, 3),
                  "device": jax.local_devices()[0].device_kind, "results": results}
        print("RESULT " + json.dumps(record), flush=True)
        if args.json:
            args.json.write_text(json.dumps(record, indent=1))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
