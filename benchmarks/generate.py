"""Seconds per denoising step and peak memory of the sampling pipelines with the real DiT size (random weights).

One step is what `longcat_jax.pipelines.denoise` compiles: the DiT (both CFG branches when guided), CFG-zero* and
the Euler update. Cases (latent grids before the 1x2x2 patching):

  t2v480p_distill      480x832, 93 frames: latents 24x60x104, 16 distill steps, guidance 1 (cfg_step_lora)
  t2v480p_cfg          the same, guidance 4: both branches in one batch of 2
  refine720p           704x1280, 186 frames: latents 48x88x160, 26 steps from t=0.5 (refinement_lora)
  refine720p_spatial   704x1280, 93 frames (spatial-only): latents 24x88x160

The refinement cases run with no BSA and with each preset of configs/bsa (the 480p ones only without: their
30x52 token grid is not divisible by 4x4 chunks). Every (case, BSA) runs in its own subprocess so its peak device
memory is its own. Weights are random and drawn on the device; the LoRA stand-ins are random too (`--lora-rank`,
0 for none). Results print as a markdown table (and JSON with --json) with the speed-up over no BSA.

    python benchmarks/generate.py                          # on the GPU: every case, every preset
    python benchmarks/generate.py --cases refine720p --presets balanced --steps 3
    python benchmarks/generate.py --small                  # smoke test: tiny DiT on the CPU

With `--reference PATH` (a checkout of the original LongCat-Video repository, never committed here) each case also
runs the original PyTorch DiT forward with the same grid, batch and BSA parameters on the same GPU, through
benchmarks/dit_step.py (its Triton BSA; its CDF mode may fail to compile, which is then reported as missing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("quality", "balanced", "fast", "adaptive", "long_video")
# steps: the schedule's base step count; t_thresh: refinement starts there (50 steps from 0.5 leave 26).
CASES = {
    "t2v480p_distill": dict(latents=(24, 60, 104), guidance=1.0, distill=True, steps=16, t_thresh=0.0, bsa=False,
                            lora="cfg_step_lora"),
    "t2v480p_cfg": dict(latents=(24, 60, 104), guidance=4.0, distill=False, steps=50, t_thresh=0.0, bsa=False,
                        lora=None),
    "refine720p": dict(latents=(48, 88, 160), guidance=1.0, distill=False, steps=50, t_thresh=0.5, bsa=True,
                       lora="refinement_lora"),
    "refine720p_spatial": dict(latents=(24, 88, 160), guidance=1.0, distill=False, steps=50, t_thresh=0.5, bsa=True,
                               lora="refinement_lora"),
}
SMALL_CASES = {
    "t2v_small": dict(latents=(4, 16, 16), guidance=4.0, distill=False, steps=4, t_thresh=0.0, bsa=False, lora=None),
    "refine_small": dict(latents=(8, 32, 32), guidance=1.0, distill=False, steps=8, t_thresh=0.5, bsa=True,
                         lora="refinement_lora"),
}
TEXT_LENGTH = 512


def preset_path(name: str) -> Path:
    return ROOT / "configs" / "bsa" / ("config_long_video.json" if name == "long_video" else f"config_720p_{name}.json")


def run_case(name: str, case: dict, preset: str | None, args: argparse.Namespace) -> dict:
    """Runs one (case, BSA) in this process and returns its measurements."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from longcat_jax.bsa_config import read_bsa_config
    from longcat_jax.models.dit import DiTConfig, enable_loras
    from longcat_jax.models.dit.loading import random_dit
    from longcat_jax.models.dit.lora import random_lora
    from longcat_jax.pipelines.denoise import Denoiser, TextCondition
    from longcat_jax.pipelines.scheduler import make_schedule, start_at
    from longcat_jax.presets import TINY_DIT_CONFIG

    config = TINY_DIT_CONFIG if args.small else DiTConfig(depth=args.depth, text_tokens_zero_pad=True)
    dtype = jnp.float32 if args.small else jnp.bfloat16
    start = time.perf_counter()
    dit = random_dit(config, seed=0, dtype=dtype, draw_on_device=not args.small)
    jax.block_until_ready(jax.tree.leaves(dit))
    build_seconds = time.perf_counter() - start
    if case["lora"] and args.lora_rank:
        enable_loras(dit, [random_lora(config, case["lora"], seed=1, rank=args.lora_rank)])
    dit.set_bsa(read_bsa_config(preset_path(preset)) if preset else None)
    denoiser = Denoiser(dit)

    guided = case["guidance"] > 1
    key = jax.random.key(0)
    latents = jax.random.normal(key, (1, config.in_channels, *case["latents"]), jnp.float32)
    text = jax.random.normal(key, (1, 1, TEXT_LENGTH, config.caption_channels), dtype)
    mask = jnp.zeros((1, TEXT_LENGTH), jnp.int32).at[:, :128].set(1)
    condition = TextCondition(text, mask, text, mask)
    schedule = start_at(make_schedule(case["steps"], distill=case["distill"]), case["t_thresh"])
    timesteps, sigmas = np.asarray(schedule.timesteps), np.asarray(schedule.sigmas)

    def step(i: int, x):
        return denoiser.step(x, condition, timesteps[i], sigmas[i], sigmas[i + 1],
                             guidance_scale=case["guidance"], guided=guided)

    start = time.perf_counter()
    latents = step(0, latents).block_until_ready()
    compile_seconds = time.perf_counter() - start
    times = []
    for i in range(1, 1 + args.steps):
        start = time.perf_counter()
        latents = step(i % len(timesteps), latents).block_until_ready()
        times.append(time.perf_counter() - start)
    stats = jax.local_devices()[0].memory_stats() or {}
    return {
        "case": name,
        "bsa": preset or "none",
        "tokens": int(np.prod(case["latents"])) // 4,
        "batch": 2 if guided else 1,
        "seconds_per_step": float(np.median(times)),
        "first_step_seconds": compile_seconds,
        "steps_in_schedule": len(timesteps),
        "peak_gib": stats.get("peak_bytes_in_use", 0) / 2**30 or None,
        "weights_build_seconds": build_seconds,
        "device": jax.local_devices()[0].device_kind,
        "finite": bool(np.isfinite(np.asarray(latents)).all()),
    }


def _dit_step():
    """benchmarks/dit_step.py as a module (this script's sibling; benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dit_step", ROOT / "benchmarks" / "dit_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_original_case(name: str, case: dict, preset: str | None, args: argparse.Namespace) -> dict:
    """The original DiT forward (what dominates its step) for this case, via benchmarks/dit_step.py."""
    bsa = json.loads(preset_path(preset).read_text())["bsa_params"] if preset else None
    t, h, w = case["latents"]
    grid_case = dict(grid=(t, h // 2, w // 2), batch=2 if case["guidance"] > 1 else 1, bsa=bsa)
    result = _dit_step().run_original(grid_case, args.depth, 1, args.steps, args.reference)
    return {"case": name, "bsa": preset or "none", "original_seconds": result["seconds"],
            "original_peak_gib": result["peak_gib"]}


def _spawn(name: str, preset: str, args: argparse.Namespace, impl: str) -> dict | None:
    command = [sys.executable, __file__, "--one", name, preset, "--impl", impl, "--steps", str(args.steps),
               "--depth", str(args.depth), "--lora-rank", str(args.lora_rank)]
    command += ["--small"] if args.small else []
    command += ["--reference", args.reference] if args.reference else []
    return _dit_step().run_child(command, f"{name} / {preset} ({impl})", args.case_timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", help="default: all (all small ones with --small)")
    parser.add_argument("--presets", nargs="*", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case after the compiling one")
    parser.add_argument("--depth", type=int, default=48, help="DiT blocks (48 = the real model)")
    parser.add_argument("--lora-rank", type=int, default=128, help="rank of the random LoRA stand-ins (0: none)")
    parser.add_argument("--small", action="store_true", help="tiny DiT on the CPU, a smoke test of this script")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--reference", help="checkout of the original LongCat-Video repository (GPU, PyTorch)")
    parser.add_argument("--case-timeout", type=float, help="seconds before a case's process is killed")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "PRESET"), help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=("ours", "original"), default="ours", help=argparse.SUPPRESS)
    args = parser.parse_args()
    table = SMALL_CASES if args.small else CASES
    if args.one:
        name, preset = args.one
        run = run_case if args.impl == "ours" else run_original_case
        print("RESULT " + json.dumps(run(name, table[name], None if preset == "none" else preset, args)))
        return
    results = []
    for name in args.cases or list(table):
        for preset in ["none"] + (args.presets if table[name]["bsa"] else []):
            result = _spawn(name, preset, args, "ours")
            if result is None:
                continue
            if args.reference:
                original = _spawn(name, preset, args, "original") or {}
                result.update(original_seconds=original.get("original_seconds"),
                              original_peak_gib=original.get("original_peak_gib"))
            results.append(result)
            print(f"{name} / {preset}: {result['seconds_per_step']:.3f} s/step", file=sys.stderr)
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def markdown(results: list[dict]) -> str:
    dense = {r["case"]: r["seconds_per_step"] for r in results if r["bsa"] == "none"}
    lines = [
        "| case | tokens | batch | BSA | s/step | speed-up | first step (compile) s | peak GiB "
        "| original s/forward | original peak GiB |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def number(value, digits: int) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    for r in results:
        speedup = dense.get(r["case"], float("nan")) / r["seconds_per_step"]
        lines.append(f"| {r['case']} | {r['tokens']:,} | {r['batch']} | {r['bsa']} | {r['seconds_per_step']:.3f} | "
                     f"{speedup:.2f}x | {r['first_step_seconds']:.1f} | {number(r['peak_gib'], 1)} "
                     f"| {number(r.get('original_seconds'), 3)} | {number(r.get('original_peak_gib'), 1)} |")
    if results:
        lines.append(f"\nDevice: {results[0]['device']}; random weights; median of the timed steps.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
