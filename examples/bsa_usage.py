"""Block Sparse Attention (BSA) in LongCat-Video JAX: five examples.

    python examples/bsa_usage.py --example 1                       # the small built-in model, on a CPU
    python examples/bsa_usage.py --example 4 --model-path LongCat-Video

1  basic use from a preset (`balanced`: `config_720p_balanced.json`, shipped in the package)
2  switching BSA on and off at run time on a loaded model
3  a custom `bsa_params`
4  speed: no BSA against each preset (seconds per denoising step, speed-up)
5  the adaptive CDF strategy: how many key blocks it kept per layer

On the built-in model (random weights) the videos are noise and a CPU runs BSA through the reference
implementation, so only the mechanics are shown; with --model-path on a GPU the numbers mean something.
The presets are read by name from the installed package, so the examples run from any folder and any install.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kernels import BSAParams
from longcat_jax.bsa_config import parse_bsa_config, read_bsa_config
from longcat_jax.pipelines.denoise import sample
from longcat_jax.pipelines.options import GenerationOptions
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.scheduler import make_schedule
from longcat_jax.pipelines.t2v import generate_t2v
from longcat_jax.video_io import save_video

logger = logging.getLogger("bsa_usage")
PROMPT = "A hot air balloon rises above green fields in the early morning light."
PRESET_NAMES = ("quality", "balanced", "fast", "adaptive", "long_video")  # packaged presets, by name


def load(args: argparse.Namespace, bsa_config: str | None = None) -> LongCatPipeline:
    """The built-in model, or the checkpoint of --model-path (a folder or a hub id); `bsa_config` a preset or file."""
    if args.model_path is None:
        return LongCatPipeline.builtin(bsa_config=bsa_config)
    return LongCatPipeline.from_pretrained(args.model_path, dtype=jnp.bfloat16, bsa_config=bsa_config)


def video_size(pipe: LongCatPipeline) -> dict:
    """A 720p-like clip whose token grid the 4x4x4 chunks divide: 704x1280x93 real, 256x256x13 built-in."""
    if pipe.builtin:
        return dict(height=256, width=256, num_frames=13)
    return dict(height=704, width=1280, num_frames=93)


def options(pipe: LongCatPipeline, args: argparse.Namespace, **changes) -> GenerationOptions:
    """The examples' t2v options: `video_size`, `--steps`, seed 0."""
    return GenerationOptions(num_inference_steps=args.steps, seed=0, **video_size(pipe), **changes)


def example_1_preset(args: argparse.Namespace) -> None:
    """Load with a preset: the DiT runs block-sparse and the log says so (`BSA on for t2v: {...}`)."""
    pipe = load(args, "balanced")
    print("BSA from the preset:", pipe.bsa)
    video = generate_t2v(pipe, PROMPT, options(pipe, args))
    path = save_video(args.output_dir / "bsa_example1.mp4", video.frames, video.fps)
    print(f"wrote {path}: {video.frames.shape[0]} frames of {video.frames.shape[2]}x{video.frames.shape[1]}")


def example_2_toggle(args: argparse.Namespace) -> None:
    """One loaded model, BSA switched per call: a task's `bsa` option (or `pipe.dit.set_bsa(...)` directly)."""
    pipe = load(args)
    on = BSAParams(sparsity=0.9375)
    for name, bsa in (("dense", None), ("BSA 0.9375", on), ("dense again", None)):
        start = time.perf_counter()
        video = generate_t2v(pipe, PROMPT, options(pipe, args, bsa=bsa))
        print(f"{name:>12}: model BSA now {pipe.dit.bsa}, {time.perf_counter() - start:.1f} s, "
              f"mean pixel {video.frames.mean():.2f}")


def example_3_custom(args: argparse.Namespace) -> None:
    """Your own parameters, validated like a JSON file (unknown keys and bad values are refused by name)."""
    custom = parse_bsa_config({
        "enable_bsa": True,
        "bsa_params": {"sparsity": 0.75, "cdf_threshold": 0.9, "chunk_3d_shape_q": [2, 4, 4],
                       "chunk_3d_shape_k": [4, 4, 4]},
    }, source="example 3")
    pipe = load(args)
    print("custom BSA:", custom)
    video = generate_t2v(pipe, PROMPT, options(pipe, args, bsa=custom))
    print(f"generated {video.frames.shape} with both rules (the larger block count wins per query block)")


def _token_latents(pipe: LongCatPipeline, latent_frames: int) -> jax.Array:
    size = video_size(pipe)
    return pipe.noise(jax.random.key(0), latent_frames, size["height"], size["width"])


def example_4_speed(args: argparse.Namespace) -> None:
    """Seconds per denoising step (DiT + update) with no BSA and with each preset, on one latent clip."""
    if jax.default_backend() == "cpu":
        logger.warning("example 4 on a CPU: BSA runs through the jnp reference there, so these speed-ups say nothing "
                       "about the GPU kernels; run it on a GPU (with --model-path) for meaningful numbers")
    pipe = load(args)
    latents = _token_latents(pipe, 8 if pipe.builtin else 24)  # 8 latent frames so the [8,4,4] chunks fit too
    text = pipe.encode_text(PROMPT)
    configs = {"no BSA": None, **{name: read_bsa_config(name) for name in PRESET_NAMES}}
    rows = []
    for name, bsa in configs.items():
        denoiser = pipe.use_dit(bsa=bsa)
        step_times: list[float] = []
        sample(denoiser, latents, make_schedule(args.steps + 1), text, desc=name, step_times=step_times)
        rows.append((name, sum(step_times[1:]) / len(step_times[1:])))  # the first step compiles
    base = rows[0][1]
    tokens = int(np.prod(latents.shape[2:])) // 4
    print(f"\n{tokens} tokens, {jax.devices()[0].device_kind}")
    print(f"{'config':<12}{'s/step':>10}{'speed-up':>10}")
    for name, seconds in rows:
        print(f"{name:<12}{seconds:>10.3f}{base / seconds:>9.2f}x")


def example_5_adaptive(args: argparse.Namespace) -> None:
    """The CDF rule keeps as many blocks as it takes to cover 98% of each query block's attention mass."""
    pipe = load(args)
    pipe.use_dit(bsa=read_bsa_config("adaptive"))
    pipe.dit.record_bsa_selection(True)
    latents = _token_latents(pipe, 4 if pipe.builtin else 24)
    text = pipe.encode_text(PROMPT)
    timestep = jnp.full((1,), 500.0)
    _, masks = nnx.capture(pipe.dit, nnx.Intermediate)(latents, timestep, text.embeddings, text.mask)
    pipe.dit.record_bsa_selection(False)
    print(f"\n{'layer':<8}{'kept blocks / query block':>28}{'of':>6}{'density':>10}")
    for path, value in sorted(nnx.to_flat_state(masks), key=lambda item: item[0][1]):
        mask = np.asarray(value.get_value()[0] if isinstance(value.get_value(), tuple) else value.get_value())
        kept = mask.sum(-1).mean()
        print(f"{path[1]:<8}{kept:>28.2f}{mask.shape[-1]:>6}{kept / mask.shape[-1]:>10.1%}")


EXAMPLES = {1: example_1_preset, 2: example_2_toggle, 3: example_3_custom, 4: example_4_speed, 5: example_5_adaptive}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--example", type=int, choices=sorted(EXAMPLES), required=True)
    parser.add_argument("--model-path", help="LongCat-Video checkpoint folder or hub id (default: the built-in model)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per run")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("jax").setLevel(logging.WARNING)
    EXAMPLES[args.example](args)


if __name__ == "__main__":
    main()
