"""Time and peak device memory of decoding 93-frame videos with the Wan 2.1 VAE, ours and the original.

The real architecture (base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4], 2 residual blocks, no extra
attention, temperal_downsample [False, True, True]) with random weights, bfloat16, batch 1, random
N(0, 1) latents, at 480x832 and 704x1280 (24 latent frames -> 93 frames). Each case runs in a fresh
subprocess so its device peak is its own. Reported per case:

- latent chunk / frame group (ours): latent frames per causal chunk, and frames per step in the
  full-resolution layers (results are the same for all; memory and speed differ);
- first: seconds of the first decode (for JAX: tracing + XLA compilation + one run);
- decode: median seconds of the following decodes;
- peak: the device's peak bytes in use in that process (weights included);
- rel L2: with `--reference`, relative L2 distance of our frames to the original's on the same
  weights and latents (first, middle and last frame).

With `--reference PATH` (a checkout of the original LongCat-Video repository; needs torch and
diffusers) the original `AutoencoderKLWan` from PATH/longcat_video/modules/autoencoder_kl_wan.py runs
the same cases in the same invocation: its random weights are saved once and loaded by both.

    python benchmarks/vae.py                                  # ours, untiled and tiled (GPU)
    python benchmarks/vae.py --reference ~/LongCat-Video     # ours and the original
    python benchmarks/vae.py --frame-group 1 none --latent-chunk 1 2   # our memory/speed knobs
    python benchmarks/vae.py --small                          # tiny config on CPU: a smoke test

It prints a table and writes nothing outside a temporary folder.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
            temperal_downsample=[False, True, True])
SMALL = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
             temperal_downsample=[False, True, True])
GIB = 2**30


def parse_size(text: str) -> tuple[int, int, int]:
    height, width, frames = (int(v) for v in text.lower().split("x"))
    if height % 8 or width % 8 or (frames - 1) % 4:
        raise SystemExit(f"size {text}: height and width must be multiples of 8 and frames 1 + 4k")
    return height, width, frames


def latents_for(size: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    height, width, frames = size
    shape = (1, 16, 1 + (frames - 1) // 4, height // 8, width // 8)
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def sample_frames(video) -> np.ndarray:
    """First, middle and last frame of a `[1, C, F, H, W]` jax or torch array, as float32 numpy."""
    frames = video.shape[2]
    picked = video[:, :, [0, frames // 2, frames - 1]]
    if hasattr(picked, "cpu"):  # torch
        picked = picked.float().cpu().numpy()
    return np.asarray(picked, np.float32)


# ----------------------------------------------------------------------------- workers (subprocesses)


def time_decode(decode, repeats: int):
    """(last video, seconds of the first call, median seconds of `repeats` more calls); `decode` synchronises."""
    start = time.perf_counter()
    video = decode()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        video = decode()
        times.append(time.perf_counter() - start)
    return video, first, statistics.median(times)


def jax_worker(spec: dict) -> dict:
    """Decodes one case with our VAE; returns timings and peak memory, saves sample frames."""
    import jax
    import jax.numpy as jnp

    from longcat_jax.models.vae import VAEConfig, load_vae, random_vae

    dtype = jnp.dtype(spec["dtype"])
    if spec.get("weights"):
        vae = load_vae(spec["weights"], dtype=dtype)
    else:
        vae = random_vae(VAEConfig.from_dict(spec["config"]), seed=0, dtype=dtype)
    latents = jnp.asarray(latents_for(tuple(spec["size"])), dtype)

    def decode():
        return vae.decode(
            latents, tiling=spec["tiling"], latent_chunk=spec["latent_chunk"], frame_group=spec["frame_group"]
        ).block_until_ready()

    video, first, median = time_decode(decode, spec["repeats"])
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    np.save(spec["frames_out"], sample_frames(video))
    return {"first": first, "decode": median, "peak": peak, "device": str(jax.devices()[0])}


def _original_class(reference: str):
    import importlib.util

    path = Path(reference).expanduser() / "longcat_video" / "modules" / "autoencoder_kl_wan.py"
    if not path.is_file():
        raise SystemExit(f"--reference: {path} not found; pass the root of a LongCat-Video checkout")
    module_spec = importlib.util.spec_from_file_location("original_autoencoder_kl_wan", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.AutoencoderKLWan


def torch_export(spec: dict) -> dict:
    """Builds the original VAE with seeded random weights and saves them (bf16) with config.json."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = _original_class(spec["reference"])(**spec["config"])
    out = Path(spec["weights"])
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()},
              str(out / "diffusion_pytorch_model.safetensors"))
    (out / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", **spec["config"]}))
    return {}


def torch_worker(spec: dict) -> dict:
    """Decodes one case with the original VAE on CUDA (bf16, as the original pipeline)."""
    import torch
    from safetensors.torch import load_file

    model = _original_class(spec["reference"])(**spec["config"])
    model.load_state_dict(load_file(str(Path(spec["weights"]) / "diffusion_pytorch_model.safetensors")))
    model = model.to("cuda", torch.bfloat16).eval()
    if spec["tiling"]:
        model.enable_tiling()
    latents = torch.from_numpy(latents_for(tuple(spec["size"]))).to("cuda", torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()

    def decode():
        with torch.inference_mode():
            video = model.decode(latents, return_dict=False)[0]
        torch.cuda.synchronize()
        return video

    video, first, median = time_decode(decode, spec["repeats"])
    peak = torch.cuda.max_memory_allocated()
    np.save(spec["frames_out"], sample_frames(video))
    return {"first": first, "decode": median, "peak": peak, "device": torch.cuda.get_device_name()}


WORKERS = {"jax": jax_worker, "torch": torch_worker, "torch-export": torch_export}


def run_worker(kind: str, spec: dict) -> dict:
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", kind, json.dumps(spec)],
        capture_output=True, text=True, env=env,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny config and sizes, for a CPU smoke test")
    parser.add_argument("--reference", help="root of an original LongCat-Video checkout (runs the original too)")
    parser.add_argument("--sizes", nargs="+", help="HxWxF, default 480x832x93 704x1280x93 (--small: 64x64x9 64x320x9)")
    parser.add_argument("--tiling", choices=["off", "on", "both"], default="both")
    parser.add_argument("--latent-chunk", type=int, nargs="+", default=[1], help="latent frames per causal chunk (ours)")
    parser.add_argument("--frame-group", nargs="+", default=["1"],
                        help="frames per step in the full-resolution layers (ours), an integer or 'none'")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.spec))))
        return

    config = SMALL if args.small else REAL
    sizes = [parse_size(s) for s in (args.sizes or (["64x64x9", "64x320x9"] if args.small else ["480x832x93", "704x1280x93"]))]
    tilings = {"off": [False], "on": [True], "both": [False, True]}[args.tiling]
    groups = [None if g.lower() == "none" else int(g) for g in args.frame_group]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = None
        if args.reference:
            weights = str(Path(tmp) / "vae")
            result = run_worker("torch-export", {"reference": args.reference, "config": config, "weights": weights})
            if "error" in result:
                raise SystemExit(f"could not build the original VAE: {result['error']}")
        for size in sizes:
            for tiling in tilings:
                base = {"size": size, "tiling": tiling, "repeats": args.repeats, "config": config,
                        "weights": weights, "dtype": args.dtype}
                reference_frames = None
                if args.reference:
                    frames_out = str(Path(tmp) / f"torch_{'x'.join(map(str, size))}_{tiling}.npy")
                    result = run_worker("torch", {**base, "reference": args.reference, "frames_out": frames_out})
                    rows.append(("original (torch)", size, tiling, "-", result, None))
                    print_row(rows[-1], header=len(rows) == 1)
                    reference_frames = frames_out if "error" not in result else None
                for chunk, group in itertools.product(args.latent_chunk, groups):
                    frames_out = str(Path(tmp) / f"jax_{'x'.join(map(str, size))}_{tiling}_{chunk}_{group}.npy")
                    result = run_worker(
                        "jax", {**base, "latent_chunk": chunk, "frame_group": group, "frames_out": frames_out}
                    )
                    error = None
                    if reference_frames and "error" not in result:
                        # the original's tiled decode returns its blend unclamped; ours clamps
                        ours, theirs = np.load(frames_out), np.clip(np.load(reference_frames), -1, 1)
                        error = float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
                    rows.append(("longcat-jax", size, tiling, f"{chunk} / {group or 'all'}", result, error))
                    print_row(rows[-1], header=len(rows) == 1)
    print()
    print_table(rows)


def _fmt_row(row) -> str:
    impl, size, tiling, chunk, result, error = row
    size_text = "x".join(map(str, size))
    if "error" in result:
        return f"| {impl} | {size_text} | {'on' if tiling else 'off'} | {chunk} | failed: {result['error'][:200]} | | | |"
    peak = "n/a" if result["peak"] is None else f"{result['peak'] / GIB:.2f}"
    rel = "-" if error is None else f"{error:.2e}"
    return (f"| {impl} | {size_text} | {'on' if tiling else 'off'} | {chunk} | {result['first']:.2f} | "
            f"{result['decode']:.2f} | {peak} | {rel} |")


HEADER = ("| implementation | HxWxF | tiling | latent chunk / frame group | first s | decode s | peak GiB "
          "| rel L2 vs original |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")


def print_row(row, header: bool) -> None:
    """Progress: each row as soon as its case finished."""
    if header:
        print(HEADER, flush=True)
    print(_fmt_row(row), flush=True)


def print_table(rows) -> None:
    devices = sorted({r[4]["device"] for r in rows if "device" in r[4]})
    print(f"Wan 2.1 VAE decode, batch 1, random weights and latents; device: {', '.join(devices)}")
    print(HEADER)
    for row in rows:
        print(_fmt_row(row))


if __name__ == "__main__":
    main()
