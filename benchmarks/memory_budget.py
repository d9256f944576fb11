"""One real-size DiT denoising step under a device-memory budget: peak memory by stage, seconds per step, and how
much of the weight streaming hides behind the compute.

For each case (token grids as benchmarks/dit_step.py: latents after 1x2x2 patching) it runs, each in its own
process so each peak is its own:

  resident      the weights on the device, all tokens at once, no cap: the unconstrained step
  planned       what `longcat_jax.memory` plans for this step within --budget (weights streamed from pinned host
                memory and/or token chunks), with the device memory really capped at the budget
                (XLA_PYTHON_CLIENT_MEM_FRACTION = budget / the GPU's memory, from nvidia-smi, preallocated as
                JAX does by default: with XLA_PYTHON_CLIENT_PREALLOCATE=false the allocator grows in pieces, and on
                an H200 a block's 11.8 GiB of temporaries then found no piece to fit in a 24 GiB cap)
  serial        the planned arrangement with no prefetch (each block's copy before its compute, none during), capped

and prints seconds per step (median after warm-up), the compile / first-step time, peak device memory after the
weights are made, after the first step and after the timed steps, XLA's temporary bytes of one compiled block
(its activations), the bytes streamed per step, the time to copy every block host -> device alone, and the
overlap: the share of that copy time the prefetch hides, (serial - planned) / copy. Weights are random, drawn on
the device block by block (a streamed block goes to pinned host memory right after, so the device never holds
more than one block while they are made).

    python benchmarks/memory_budget.py --budget 24GiB                               # H200/H100: the 720p step
    python benchmarks/memory_budget.py --budget 24GiB --cases t2v480p_cfg --quantize fp8
    python benchmarks/memory_budget.py --small                                       # any machine, the CPU too

On the CPU (`--small`: a 256-wide 2-block DiT on a 4x8x8 grid) there is no allocator to cap or read and host
and device memory are one RAM: it checks that every mode runs and agrees, not what a GPU shows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from dit_step import real_config  # this script's sibling: the real DiT's config
from dit_step import run_child as run_case_process  # one way to run a case in its own process

CASES = {  # bsa: the top-k sparsity of the self attention's BSA, None for dense
    "refine168k_bsa": dict(grid=(48, 44, 80), batch=1, bsa=0.9375),
    # the 'quality' preset: on Hopper the bf16 forward runs one launch with phased walks here (`kernels.key_ranges`;
    # three key ranges before the thirty-seventh session, when its memory was measured)
    "refine168k_bsa0875": dict(grid=(48, 44, 80), batch=1, bsa=0.875),
    "refine84k_bsa": dict(grid=(24, 44, 80), batch=1, bsa=0.9375),
    "t2v480p_cfg": dict(grid=(24, 30, 52), batch=2, bsa=None),
    "t2v480p_distill": dict(grid=(24, 30, 52), batch=1, bsa=None),
}
SMALL_GRID = (4, 8, 8)
TEXT_LEN = 512
MODES = ("resident", "planned", "serial", "analyze")

_START = time.perf_counter()


def _log(message: str) -> None:
    print(f"  [{time.perf_counter() - _START:7.1f} s] {message}", flush=True)


def _peak_gib(device) -> float | None:
    peak = (device.memory_stats() or {}).get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def _make_dit(config, quantize: str, host_sharding):
    """A LongCatDiT of `config` with random weights drawn on the device block by block (N(0, 1/fan_in) kernels,
    zero biases, unit norm scales); each block's weights go to `host_sharding` right after (None: stay)."""
    import dataclasses
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from longcat_jax.models.dit.quantized_linear import quantize_linears
    from longcat_jax.models.dit.transformer import LongCatDiT
    from longcat_jax.quantization import QUANTIZED_BLOCK_LINEARS

    @functools.partial(jax.jit, static_argnames=("shape", "dtype", "kind"))
    def draw(key, shape, dtype, kind):
        if kind == "kernel":
            return (jax.random.normal(key, shape, jnp.float32) / np.sqrt(np.prod(shape[:-1]))).astype(dtype)
        return (jnp.ones if kind == "scale" else jnp.zeros)(shape, dtype)

    def filled(module, key):
        """A new module of `module`'s structure with drawn weights (its own Variables: nothing shared)."""
        graphdef, state = nnx.split(module)
        leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
        drawn = [draw(jax.random.fold_in(key, index), tuple(leaf.shape), jnp.dtype(leaf.dtype).name,
                      next(str(k.key) for k in reversed(path) if hasattr(k, "key")))
                 for index, (path, leaf) in enumerate(leaves)]
        return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, drawn))

    # Building the whole 48-block module abstractly takes half a minute (tracing grows with the depth); one
    # block's structure is built once and each block filled from it.
    skeleton = nnx.eval_shape(lambda: LongCatDiT(dataclasses.replace(config, depth=1), rngs=nnx.Rngs(0),
                                                 dtype=jnp.bfloat16, param_dtype=jnp.bfloat16))
    key = jax.random.key(0)
    dit = filled(skeleton, jax.random.fold_in(key, 10**6))
    block_skeleton = skeleton.blocks[0]
    blocks = []
    for index in range(config.depth):
        block = filled(block_skeleton, jax.random.fold_in(key, index))
        quantize_linears(block, quantize, select=lambda path: tuple(path) in QUANTIZED_BLOCK_LINEARS)
        if host_sharding is not None:
            graphdef, state = nnx.split(block)
            block = nnx.merge(graphdef, jax.device_put(state, host_sharding))
        jax.block_until_ready(nnx.state(block))
        blocks.append(block)
    dit.blocks = nnx.List(blocks)
    dit.config = config
    dit.set_bsa(config.bsa_params if config.enable_bsa else None)
    return dit


def run_child(args) -> dict:
    """One (case, mode) in this process."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from longcat_jax.memory.footprint import DiTCall
    from longcat_jax.memory.plan import Budget, Models, Placement, plan_memory
    from longcat_jax.memory.sizes import parse_size
    from longcat_jax.memory.streaming import StreamedDiT
    from longcat_jax.memory.workloads import DiTStage, RunWork
    from longcat_jax.models.dit.config import DiTConfig
    from longcat_jax.models.text_encoder.config import UMT5Config
    from longcat_jax.models.vae.config import VAEConfig
    from longcat_jax.quantization import quantized_jit

    case = CASES[args.case]
    config = DiTConfig.from_dict(real_config(args.depth, case["bsa"], args.small))
    grid = SMALL_GRID if args.small else case["grid"]
    batch = case["batch"]
    device = jax.local_devices()[0]
    bsa = config.bsa_params if config.enable_bsa else None
    call = DiTCall(batch, grid, TEXT_LEN, bsa)
    quantize = None if args.quantize == "none" else args.quantize
    if args.mode == "resident":
        placement = Placement()
    else:
        # The plan of this one step within the budget (the text encoder and VAE are not part of it).
        work = RunWork((DiTStage("denoising", call, 1),), (), prompts=0, text_length=TEXT_LEN)
        text = UMT5Config(vocab_size=1, d_model=1, d_kv=1, d_ff=1, num_layers=1, num_heads=1)
        models = Models(config, text, VAEConfig(), jnp.bfloat16, jnp.bfloat16, jnp.bfloat16, quantize)
        budget = Budget(parse_size(args.budget), f"--budget {args.budget}", device.platform, explicit=True)
        plan = plan_memory(work, models, budget)
        plan.log()
        placement = plan.placement
        for line in plan.lines():
            _log(line)
    streamed = placement.dit_streamed or (args.force_streaming and args.mode != "resident")
    host = None
    if streamed:
        from jax.sharding import SingleDeviceSharding

        host = SingleDeviceSharding(device, memory_kind="pinned_host")
    start = time.perf_counter()
    dit = _make_dit(config, quantize, host)
    dit.set_token_chunking(placement.chunk_tokens)
    result = {"case": args.case, "mode": args.mode, "streamed": streamed, "chunk_tokens": placement.chunk_tokens,
              "weights_s": time.perf_counter() - start, "peak_weights_gib": _peak_gib(device),
              "device": device.device_kind}
    _log(f"weights made in {result['weights_s']:.1f} s (streamed={streamed}, chunk_tokens={placement.chunk_tokens})")

    keys = jax.random.split(jax.random.key(2), 2)
    t, h, w = grid
    latents = jax.random.normal(keys[0], (batch, 16, t, 2 * h, 2 * w), jnp.bfloat16)
    text = jax.random.normal(keys[1], (batch, 1, TEXT_LEN, config.caption_channels), jnp.bfloat16)
    mask = (jnp.arange(TEXT_LEN)[None, :] < jnp.array([200, 120][:batch])[:, None]).astype(jnp.int32)
    timestep = jnp.full((batch,), 700.0, jnp.float32)

    if streamed:
        runner = StreamedDiT(dit, prefetch=0 if args.mode == "serial" else 1, device=device)
        step = lambda: runner(latents, timestep, text, mask)  # noqa: E731
        result["bytes_per_step"] = runner.bytes_per_call
    else:
        graphdef, state = nnx.split(dit)
        compiled = quantized_jit(lambda s, *a: nnx.merge(graphdef, s)(*a))
        step = lambda: compiled(state, latents, timestep, text, mask)  # noqa: E731
        result["bytes_per_step"] = 0
    result["block_temp_gib"] = _block_memory(dit, grid, batch)["temp"] / 2**30

    start = time.perf_counter()
    out = step()
    out.block_until_ready()
    result["first_step_s"] = time.perf_counter() - start
    result["peak_first_step_gib"] = _peak_gib(device)
    _log(f"first step (compiles) {result['first_step_s']:.1f} s")
    times = []
    for i in range(args.warmup + args.iters):
        start = time.perf_counter()
        step().block_until_ready()
        times.append(time.perf_counter() - start)
        _log(f"{'warm-up' if i < args.warmup else 'step'} {i + 1}: {times[-1]:.3f} s")
    result["seconds"] = statistics.median(times[args.warmup:])
    result["peak_steps_gib"] = _peak_gib(device)
    if streamed:
        result["copy_s"] = _copy_time(runner)
    if args.check_output:
        result["output"] = [float(x) for x in jnp.asarray(out, jnp.float32).reshape(-1)[:64]]
    return result


def _block_memory(block_owner, grid, batch: int) -> dict:
    """XLA's memory analysis of one compiled block (of `block_owner`, a DiT, abstract or not) at a token `grid`
    and `batch`: its temporary bytes (the activations beyond its arguments) and its argument and output bytes."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    config = block_owner.config
    n = grid[0] * grid[1] * grid[2]
    graphdef, state = nnx.split(block_owner.blocks[0])
    x = jax.ShapeDtypeStruct((batch, n, config.hidden_size), block_owner.dtype)
    text_in = jax.ShapeDtypeStruct((batch, TEXT_LEN, config.hidden_size), block_owner.dtype)
    t_emb = jax.ShapeDtypeStruct((batch, grid[0], config.adaln_tembed_dim), jnp.float32)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    bsa, backend = block_owner.bsa, block_owner.bsa_backend

    def block(state, x, text, t_emb):
        return nnx.merge(graphdef, state)(x, text, None, t_emb, grid, bsa=bsa, bsa_backend=backend)[0]

    from longcat_jax.quantization import compiler_options_for

    jitted = jax.jit(block, donate_argnums=(1,), compiler_options=compiler_options_for(abstract))
    analysis = jitted.lower(abstract, x, text_in, t_emb).compile().memory_analysis()
    if analysis is None:
        return {"temp": 0, "arguments": 0, "output": 0}
    return {"temp": analysis.temp_size_in_bytes, "arguments": analysis.argument_size_in_bytes,
            "output": analysis.output_size_in_bytes, "alias": analysis.alias_size_in_bytes}


def run_analysis(args) -> dict:
    """XLA's temporary bytes of one block against `longcat_jax.memory.footprint`'s activation estimate, for each
    token chunk choice of the plan, at this case's grid (compiles only; no weights are made)."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from longcat_jax.memory.footprint import DiTCall, dit_activations
    from longcat_jax.memory.plan import CHUNK_CHOICES
    from longcat_jax.models.dit.config import DiTConfig
    from longcat_jax.models.dit.transformer import LongCatDiT

    case = CASES[args.case]
    config = DiTConfig.from_dict(real_config(1, case["bsa"], args.small))
    grid = SMALL_GRID if args.small else case["grid"]
    skeleton = nnx.eval_shape(lambda: LongCatDiT(config, rngs=nnx.Rngs(0), dtype=jnp.bfloat16,
                                                 param_dtype=jnp.bfloat16))
    rows = []
    for chunk in CHUNK_CHOICES:
        skeleton.set_token_chunking(chunk)
        measured = _block_memory(skeleton, grid, case["batch"])
        call = DiTCall(case["batch"], grid, TEXT_LEN, config.bsa_params if config.enable_bsa else None)
        estimate = dit_activations(dataclasses.replace(config, depth=1), call, act_bytes=2, chunk_tokens=chunk,
                                   platform=jax.default_backend())
        rows.append({"chunk_tokens": chunk, **measured, "estimate": estimate})
        _log(f"chunk {chunk}: XLA temp {measured['temp'] / 2**30:.2f} GiB, arguments "
             f"{measured['arguments'] / 2**30:.2f} GiB, output {measured['output'] / 2**30:.2f} GiB; "
             f"footprint estimate {estimate / 2**30:.2f} GiB")
    return {"case": args.case, "mode": "analyze", "rows": rows}


def _copy_time(runner) -> float:
    """Seconds to copy every block's weights host -> device, one block at a time with nothing else running."""
    import jax

    start = time.perf_counter()
    for index in range(len(runner.block_bytes)):
        jax.block_until_ready(runner._fetch(index))
    return time.perf_counter() - start


def _gpu_memory_bytes() -> int | None:
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=False).stdout.split()
    return int(out[0]) * 2**20 if out else None


def _spawn(case: str, mode: str, args) -> dict | None:
    from longcat_jax.memory.sizes import parse_size

    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    total = _gpu_memory_bytes()
    if mode != "resident" and total:
        # The cap as a user's card has it: one preallocated pool of the budget.
        env.update(XLA_PYTHON_CLIENT_PREALLOCATE="true",
                   XLA_PYTHON_CLIENT_MEM_FRACTION=f"{parse_size(args.budget) / total:.4f}")
    cmd = [sys.executable, __file__, "--child", "--case", case, "--mode", mode, "--budget", args.budget,
           "--depth", str(args.depth), "--warmup", str(args.warmup), "--iters", str(args.iters),
           "--quantize", args.quantize] + ["--small"] * args.small + ["--check-output"] * args.check_output
    cmd += ["--force-streaming"] * args.force_streaming
    cap = env.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "none")
    return run_case_process(cmd, f"{case} {mode} (cap: {cap})", args.case_timeout or None, env=env)


def _print_table(rows: list[dict], args) -> None:
    nan = float("nan")
    print(f"\nbudget {args.budget}, depth {min(args.depth, 2) if args.small else args.depth}"
          f"{' (--small)' if args.small else ''}, quantize {args.quantize}, median of {args.iters} after {args.warmup} "
          "warm-up; peaks in GiB after the weights / the first step / the timed steps")
    print(f"{'case':<16} {'mode':<9} {'streamed':>8} {'chunk':>7} {'s/step':>8} {'vs resident':>11} "
          f"{'first s':>8} {'peaks GiB':>20} {'block temp GiB':>14} {'GiB/step':>8} {'copy s':>7} {'overlap':>7}")
    for row in rows:
        if row["mode"] == "analyze":
            continue
        resident = next((r for r in rows if r["case"] == row["case"] and r["mode"] == "resident"), None)
        serial = next((r for r in rows if r["case"] == row["case"] and r["mode"] == "serial"), None)
        ratio = row["seconds"] / resident["seconds"] if resident else nan
        overlap = nan
        if row["mode"] == "planned" and serial and row.get("copy_s"):
            overlap = (serial["seconds"] - row["seconds"]) / row["copy_s"]
        peaks = "/".join("-" if row.get(k) is None else f"{row[k]:.1f}"
                         for k in ("peak_weights_gib", "peak_first_step_gib", "peak_steps_gib"))
        print(f"{row['case']:<16} {row['mode']:<9} {str(row['streamed']):>8} {str(row['chunk_tokens']):>7} "
              f"{row['seconds']:>8.3f} {ratio:>11.2f} {row['first_step_s']:>8.1f} {peaks:>20} "
              f"{row['block_temp_gib']:>14.2f} {row['bytes_per_step'] / 2**30:>8.2f} {row.get('copy_s', nan):>7.2f} "
              f"{overlap:>7.2f}")
    for row in rows:
        if row["mode"] == "analyze":
            for entry in row["rows"]:
                print(f"{row['case']}: one block, chunk {entry['chunk_tokens']}: XLA temporaries "
                      f"{entry['temp'] / 2**30:.2f} GiB (+ arguments {entry['arguments'] / 2**30:.2f} GiB), "
                      f"longcat_jax.memory estimate {entry['estimate'] / 2**30:.2f} GiB")
    outputs = {}
    for row in rows:
        if "output" in row:
            outputs.setdefault(row["case"], []).append((row["mode"], row["output"]))
    for case, items in outputs.items():
        reference = dict(items).get("resident")
        for mode, values in items:
            if reference and mode != "resident":
                diff = max(abs(a - b) for a, b in zip(values, reference))
                print(f"{case} {mode}: largest difference from resident over 64 outputs {diff:.3e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="24GiB", help="device-memory budget, e.g. 24GiB, 48GB")
    parser.add_argument("--cases", default="refine168k_bsa", help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument("--modes", default="resident,planned,serial", help="comma-separated subset of " + ", ".join(MODES))
    parser.add_argument("--depth", type=int, default=48, help="DiT blocks (48 = the real model)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--quantize", default="none", help="none, fp8, fp8-weight-only or int8 (block Linears)")
    parser.add_argument("--force-streaming", action="store_true",
                        help="stream the weights in 'planned' and 'serial' even where the budget holds them")
    parser.add_argument("--case-timeout", type=float, default=None, help="seconds before a case's process is killed")
    parser.add_argument("--small", action="store_true", help="a 256-wide, 2-block DiT on a 4x8x8 grid (any machine)")
    parser.add_argument("--check-output", action="store_true", help="compare the modes' outputs (first 64 values)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_analysis(args) if args.mode == "analyze" else run_child(args)), flush=True)
        return
    from longcat_jax.memory.sizes import parse_size

    parse_size(args.budget, what="--budget")
    rows = []
    for case in args.cases.split(","):
        if case not in CASES:
            parser.error(f"unknown case {case!r}; choose from {', '.join(CASES)}")
        for mode in args.modes.split(","):
            if mode not in MODES:
                parser.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
            result = _spawn(case, mode, args)
            if result:
                rows.append(result)
    _print_table(rows, args)


if __name__ == "__main__":
    main()
