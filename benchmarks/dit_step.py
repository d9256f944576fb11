"""One DiT denoising step (one forward, bf16) of the real 13.6B LongCat DiT, ours next to the original.

Cases (token grids of the latent after 1x2x2 patching):
  refine168k_bsa   48x44x80 = 168,960 tokens, B=1, BSA 0.9375 (720p refinement, frames doubled)
  refine84k_bsa    24x44x80 =  84,480 tokens, B=1, BSA 0.9375 (720p spatial-only refinement)
  refine84k_dense  24x44x80, B=1, dense attention
  t2v480p_dense    24x30x52 =  37,440 tokens, B=2 (both CFG branches), dense

Every case runs in its own subprocess so peak device memory is that case's alone. Weights are random,
made on the device (no checkpoint transfer). With `--reference PATH` (a checkout of the original LongCat-Video
repository, never committed here) the original PyTorch model runs the same cases on the same GPU: its Triton
BSA, and cuDNN SDPA where it would call flash-attn. Prints seconds per step (median after warm-up), compile
time, peak memory, and the ratio original / ours.

`--quantize none,fp8,int8` runs ours once per mode, the block Linears quantized on the device right after the
draw (`longcat_jax.models.dit.quantized_linear.quantize_linears`), and adds the weights' size on the device and
the number of cuBLASLt FP8 GEMMs in the compiled step; `--quality` adds the step output's relative L2 against
the bf16 model of the same weights, whole and per block (each block's local error on the bf16 model's hidden
state; the bf16 weights are drawn again after the timing). `--small` runs a 256-wide, 2-block DiT on a 4x8x8
grid instead: a functional check on any machine, the CPU included.

    python benchmarks/dit_step.py --reference /path/to/LongCat-Video
    python benchmarks/dit_step.py --cases refine84k_bsa --depth 4        # quick look
    python benchmarks/dit_step.py --cases refine168k_bsa --context-parallel 1,2,4   # scaling over GPUs
    python benchmarks/dit_step.py --quantize none,fp8,int8 --reference /path/to/LongCat-Video
    python benchmarks/dit_step.py --cases t2v480p_dense --quantize fp8 --quality   # error vs bf16, per block
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import threading
import time

CASES = {
    "refine84k_bsa": dict(grid=(24, 44, 80), batch=1, bsa=0.9375),
    "refine168k_bsa": dict(grid=(48, 44, 80), batch=1, bsa=0.9375),
    "refine84k_dense": dict(grid=(24, 44, 80), batch=1, bsa=None),
    "t2v480p_dense": dict(grid=(24, 30, 52), batch=2, bsa=None),
}
BSA_PARAMS = {"sparsity": 0.9375, "cdf_threshold": None, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [4, 4, 4]}
TEXT_LEN = 512


SMALL_GRID = (4, 8, 8)


def bsa_params_of(bsa: float | dict | None) -> dict | None:
    """A case's `bsa` as the DiT config's bsa_params: None (dense attention), a top-k sparsity (`BSA_PARAMS`'s 4x4x4
    chunks), or a preset's bsa_params dict."""
    if bsa is None or isinstance(bsa, dict):
        return bsa
    return {**BSA_PARAMS, "sparsity": float(bsa)}


def real_config(depth: int, bsa: float | dict | None, small: bool = False) -> dict:
    """The real DiT's config dict (width 4096, 32 heads) with `depth` blocks and `bsa` as `bsa_params_of` reads it;
    small: 2 blocks at most, width 256, 4 heads (any machine)."""
    if small:
        return {**real_config(min(depth, 2), bsa), "hidden_size": 256, "num_heads": 4}
    bsa_params = bsa_params_of(bsa)
    return {
        "in_channels": 16, "out_channels": 16, "hidden_size": 4096, "depth": depth, "num_heads": 32,
        "caption_channels": 4096, "mlp_ratio": 4, "adaln_tembed_dim": 512, "frequency_embedding_size": 256,
        "patch_size": [1, 2, 2], "enable_bsa": bsa_params is not None, "bsa_params": bsa_params,
        "text_tokens_zero_pad": True,
    }


_START = time.perf_counter()


def random_inputs(grid: tuple[int, int, int], batch: int, seed: int = 2):
    """The DiT's call arguments for a token grid (T, H, W) after its 1x2x2 patches: latents [B, 16, T, 2H, 2W] and
    text [B, 1, 512, 4096] N(0, 1) in bf16 (drawn from `seed`), timestep 700, the two batch entries' text masks 200
    and 120 tokens long."""
    import jax
    import jax.numpy as jnp

    if batch not in (1, 2):
        raise ValueError(f"random_inputs makes a batch of 1 or 2 (one text mask per CFG entry), got {batch}")
    t, h, w = grid
    keys = jax.random.split(jax.random.key(seed), 2)
    latents = jax.random.normal(keys[0], (batch, 16, t, 2 * h, 2 * w), jnp.bfloat16)
    text = jax.random.normal(keys[1], (batch, 1, TEXT_LEN, 4096), jnp.bfloat16)
    mask = (jnp.arange(TEXT_LEN)[None, :] < jnp.array([200, 120][:batch])[:, None]).astype(jnp.int32)
    timestep = jnp.full((batch,), 700.0, jnp.float32)
    return latents, timestep, text, mask


def _log(message: str) -> None:
    """A progress line with the seconds since the process started (streamed by the parent)."""
    print(f"  [{time.perf_counter() - _START:7.1f} s] {message}", flush=True)


def _median_time(fn, warmup: int, iters: int) -> float:
    for i in range(warmup):
        start = time.perf_counter()
        fn()
        _log(f"warm-up {i + 1}: {time.perf_counter() - start:.3f} s")
    times = []
    for i in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        _log(f"step {i + 1}: {times[-1]:.3f} s")
    return statistics.median(times)


def run_ours(case: dict, depth: int, warmup: int, iters: int, context_parallel: int, quantize: str = "none",
             quality: bool = False, small: bool = False, report=None, fp8_gemm_dtype: str | None = None,
             profile: bool = False) -> dict:
    """Times our step; `report(result)` gets the result as soon as the timing is done and again with the quality
    figures, so a process killed during the quality pass still leaves its timing. `profile`: one more step under
    the profiler, its largest device ops printed (`device_profile`)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from longcat_jax.metrics import rel_l2
    from longcat_jax.models.dit.config import DiTConfig
    from longcat_jax.models.dit.loading import random_dit
    from longcat_jax.models.dit.quantized_linear import quantize_linears
    from longcat_jax.quantization import CUBLAS_FP8_GEMM, check_quantize_supported, compiler_options_for
    from longcat_jax.quantization.block_errors import block_errors
    from longcat_jax.quantization.modes import FP8_COMPUTE, SCHEMES, uses_fp8_attention
    from longcat_jax.sharding import shard_dit

    check_quantize_supported(quantize)
    # The FP8 GEMM's output dtype is an option of the scheme (`QuantScheme.gemm_dtype`); None keeps the scheme's.
    fp8_compute = quantize in SCHEMES and SCHEMES[quantize].compute == FP8_COMPUTE
    scheme = (dataclasses.replace(SCHEMES[quantize], gemm_dtype=fp8_gemm_dtype or SCHEMES[quantize].gemm_dtype)
              if fp8_compute else quantize)
    config = DiTConfig.from_dict(real_config(depth, case["bsa"], small))
    t, h, w = SMALL_GRID if small else case["grid"]
    b = case["batch"]
    # Drawn on the device one parameter at a time (one small program per distinct shape; one program drawing
    # all 13.6B values at once took 320 s on an H200), then, for several devices, replicated over the mesh with
    # the tokens split over it (Ulysses all-to-all around self attention). Quantized Linears replace the bf16
    # ones one at a time, on the device, so the peak holds the bf16 model plus one layer.
    model = quantize_linears(random_dit(config, dtype=jnp.bfloat16, draw_on_device=True), scheme)
    model.set_fp8_attention(uses_fp8_attention(scheme))  # 'fp8-attention': the dense self attention in FP8 too
    plan = shard_dit(model, context_parallel) if context_parallel > 1 else None
    devices = list(plan.mesh.devices.flat) if plan else jax.local_devices()[:1]
    jax.block_until_ready(nnx.state(model))
    gemm = f", FP8 GEMM output {scheme.gemm_dtype}" if fp8_compute else ""
    _log(f"random weights made on the device (quantize={quantize}{gemm})")
    leaves = jax.tree.leaves(nnx.state(model))
    num_params = sum(x.size for x in leaves)
    weights_gib = sum(x.nbytes for x in leaves) / 2**30
    latents, timestep, text, mask = random_inputs((t, h, w), b)
    if plan:
        latents, text, mask, timestep = jax.device_put((latents, text, mask, timestep), plan.replicated)

    graphdef, state = nnx.split(model)

    def step(state, latents, timestep, text, mask):
        return nnx.merge(graphdef, state)(latents, timestep, text, mask)

    start = time.perf_counter()
    lowered = jax.jit(step).lower(state, latents, timestep, text, mask)
    _log(f"lowered in {time.perf_counter() - start:.1f} s")
    compiled = lowered.compile(compiler_options=compiler_options_for(state))
    compile_s = time.perf_counter() - start
    _log(f"compiled in {compile_s:.1f} s (lowering included)")
    fp8_gemms = compiled.as_text().count(CUBLAS_FP8_GEMM)
    seconds = _median_time(lambda: compiled(state, latents, timestep, text, mask).block_until_ready(), warmup, iters)
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in devices]
    result = {"seconds": seconds, "compile_s": compile_s, "peak_gib": max(peaks) / 2**30,
              "params_b": num_params / 1e9, "weights_gib": weights_gib, "fp8_gemms": fp8_gemms,
              "device": str(devices[0].device_kind), "devices": len(devices)}
    report = report or (lambda result: None)
    report(result)
    if profile:
        from device_profile import print_top  # this script's sibling

        print_top(lambda: compiled(state, latents, timestep, text, mask).block_until_ready(), prefix="  [profile] ",
                  label=f"one step, quantize={quantize}", hlo_text=compiled.as_text())
    if quality and quantize != "none":
        out = compiled(state, latents, timestep, text, mask)
        reference = random_dit(config, dtype=jnp.bfloat16, draw_on_device=True)  # the same draws, unquantized
        if plan:
            shard_dit(reference, context_parallel)
        # the bf16 output comes from the paired pass (the model's call around one compiled program per block pair)
        want, blocks = block_errors(reference, model, latents, timestep, text, mask)
        result["rel_l2"] = rel_l2(jax.device_get(out), jax.device_get(want))
        _log(f"step output rel L2 vs bf16: {result['rel_l2']:.3e}")
        report(result)
        result["blocks"] = [[e.output_rel, e.update_rel] for e in blocks]
        _log("per-block rel L2 (of the output / of the update): max "
             f"{max(e.output_rel for e in blocks):.3e} / {max(e.update_rel for e in blocks):.3e}")
    return result


def _install_flash_attn_shim():
    """A stand-in `flash_attn` module running the original's dense calls through cuDNN SDPA."""
    import importlib.machinery
    import types

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, **_):  # [B, S, H, D]
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 scale=softmax_scale)
        return out.transpose(1, 2)

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **_):
        outs = []
        for i in range(len(cu_seqlens_q) - 1):
            qs, qe, ks, ke = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1]), int(cu_seqlens_k[i]), int(cu_seqlens_k[i + 1])
            outs.append(flash_attn_func(q[None, qs:qe], k[None, ks:ke], v[None, ks:ke])[0])
        return torch.cat(outs)

    module = types.ModuleType("flash_attn")
    # diffusers probes installed packages with importlib.util.find_spec, which needs a spec.
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    module.flash_attn_func = flash_attn_func
    module.flash_attn_varlen_func = flash_attn_varlen_func
    sys.modules["flash_attn"] = module


def run_original(case: dict, depth: int, warmup: int, iters: int, reference: str) -> dict:
    import torch

    sys.path.insert(0, reference)
    _install_flash_attn_shim()
    from longcat_video.modules.longcat_video_dit import LongCatVideoTransformer3DModel

    config = real_config(depth, case["bsa"])
    config.update(enable_flashattn2=True, cp_split_hw=[1, 1])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LongCatVideoTransformer3DModel(**config).to(torch.bfloat16).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    num_params = sum(p.numel() for p in model.parameters())
    torch.cuda.synchronize()
    _log("original model made on the device")
    t, h, w = case["grid"]
    b = case["batch"]
    latents = torch.randn(b, 16, t, 2 * h, 2 * w, device="cuda", dtype=torch.bfloat16)
    text = torch.randn(b, 1, TEXT_LEN, 4096, device="cuda", dtype=torch.bfloat16)
    mask = (torch.arange(TEXT_LEN, device="cuda")[None] < torch.tensor([200, 120][:b], device="cuda")[:, None]).long()
    timestep = torch.full((b,), 700.0, device="cuda", dtype=torch.bfloat16)

    def step():
        with torch.no_grad():
            model(latents, timestep, text, mask)
        torch.cuda.synchronize()

    torch.cuda.reset_peak_memory_stats()
    seconds = _median_time(step, warmup, iters)
    return {"seconds": seconds, "compile_s": 0.0, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "params_b": num_params / 1e9, "device": torch.cuda.get_device_name()}


def _child(args) -> None:
    case = CASES[args.case]
    if args.impl == "ours":
        result = run_ours(case, args.depth, args.warmup, args.iters, args.context_parallel, args.quantize, args.quality,
                          args.small, report=_print_result, fp8_gemm_dtype=args.fp8_gemm_dtype, profile=args.profile)
    else:
        result = run_original(case, args.depth, args.warmup, args.iters, args.reference)
    _print_result(result)


def _print_result(result: dict) -> None:
    """The `RESULT {...}` line the parent reads; a child may print several, the last one counts."""
    print("RESULT " + json.dumps(result), flush=True)


def run_child(cmd: list[str], label: str, timeout: float | None = None, env: dict | None = None) -> dict | None:
    """Runs one benchmark case in its own process (so its device peak is its own), echoing its progress lines.

    Returns the dict of the child's last `RESULT {...}` line (marked "partial" when the child did not finish), or
    None, printing the child's last output, when it failed or ran past `timeout` seconds (it is then killed, also
    while it prints nothing) before any result. `env` defaults to this
    process's with preallocation off, so the peak the child reports is what it used.
    """
    env = env if env is not None else dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    print(f"{label}:", flush=True)
    result, tail = None, []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        try:
            for line in proc.stdout:
                if line.startswith("RESULT "):
                    result = json.loads(line[len("RESULT "):])
                elif line.startswith("  ["):
                    print(line, end="", flush=True)
                else:
                    tail = (tail + [line])[-40:]
            proc.wait()
        finally:
            if timer:
                timer.cancel()
    killed = f" (killed after {timeout:g} s)" if timeout and proc.returncode == -9 else ""
    if result is None:
        print(f"[{label}] failed{killed}:\n{''.join(tail)}", flush=True)
    elif proc.returncode != 0:
        print(f"[{label}] stopped{killed} after a partial result (the figures it printed before are kept)", flush=True)
        result["partial"] = True
    return result


def _spawn(case: str, impl: str, args) -> dict | None:
    cmd = [sys.executable, __file__, "--child", "--case", case, "--impl", impl, "--depth", str(args.depth),
           "--warmup", str(args.warmup), "--iters", str(args.iters), "--context-parallel", str(args.context_parallel),
           "--quantize", args.quantize]
    if args.fp8_gemm_dtype:
        cmd += ["--fp8-gemm-dtype", args.fp8_gemm_dtype]
    if args.reference:
        cmd += ["--reference", args.reference]
    cmd += ["--quality"] * args.quality + ["--small"] * args.small + ["--profile"] * args.profile
    label = f"{impl} {case}" + (f" quantize={args.quantize}" if impl == "ours" else "")
    return run_child(cmd, label, args.case_timeout)


def main() -> None:
    from longcat_jax.quantization.modes import GEMM_DTYPES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument("--depth", type=int, default=48, help="number of DiT blocks (48 = the real model)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--case-timeout", type=float, default=None, help="seconds before a case's process is killed")
    parser.add_argument("--reference", help="path of a checkout of the original LongCat-Video repository")
    parser.add_argument("--context-parallel", default="1",
                        help="GPUs to shard the tokens over; a comma-separated list (e.g. 1,2,4,8) runs each count "
                        "and reports the scaling efficiency (speed-up over the first count / count ratio)")
    parser.add_argument("--quantize", default="none",
                        help="quantization modes to run ours in, comma-separated: none, fp8, fp8-attention, "
                        "fp8-weight-only, int8")
    parser.add_argument("--fp8-gemm-dtype", choices=list(GEMM_DTYPES),
                        help="what the FP8 GEMM writes before its scales are applied (`QuantScheme.gemm_dtype`; "
                        "default: the scheme's, bfloat16)")
    parser.add_argument("--quality", action="store_true",
                        help="for quantized runs, also the step output's relative L2 against bf16, whole and per block")
    parser.add_argument("--small", action="store_true", help="a 256-wide, 2-block DiT on a 4x8x8 grid (any machine)")
    parser.add_argument("--profile", action="store_true",
                        help="ours: one more step under the profiler, its largest device ops printed")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "original"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        counts = [int(n) for n in args.context_parallel.split(",")]
    except ValueError:
        parser.error(f"--context-parallel takes device counts like 1,2,4; got {args.context_parallel!r}")
    modes = args.quantize.split(",")
    if args.child:
        args.context_parallel = counts[0]
        _child(args)
        return
    from longcat_jax.quantization import MODES

    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown --quantize mode(s) {unknown}; choose from {', '.join(MODES)}")
    if args.fp8_gemm_dtype and not {"fp8", "fp8-attention"} & set(modes):
        parser.error(f"--fp8-gemm-dtype {args.fp8_gemm_dtype} applies to --quantize fp8 and fp8-attention only; add "
                     "one of them to --quantize")
    if args.small and args.reference:
        parser.error("--small runs a toy config; the original runs the real one: drop --reference or --small")
    rows = []
    for case in args.cases.split(","):
        if case not in CASES:
            parser.error(f"unknown case {case!r}; choose from {', '.join(CASES)}")
        original = _spawn(case, "original", args) if args.reference else None
        for count in counts:
            for mode in modes:
                ours = _spawn(case, "ours", argparse.Namespace(**{**vars(args), "context_parallel": count,
                                                                  "quantize": mode}))
                rows.append((case, count, mode, ours, original))
                print(f"{case} x{count} {mode}: ours={ours} original={original}", flush=True)
    _print_table(rows, counts, args)


def _print_table(rows, counts: list[int], args) -> None:
    nan = float("nan")
    depth = min(args.depth, 2) if args.small else args.depth
    print(f"\ndepth {depth}{' (--small)' if args.small else ''}, median of {args.iters} after {args.warmup} warm-up; "
          "peak GiB: the largest of the "
          f"devices; scaling: speed-up over {counts[0]} device(s) and that divided by the device ratio; vs none: "
          "speed-up over the unquantized run; f8 GEMMs: cuBLASLt FP8 calls in the compiled step")
    print(f"{'case':<17} {'GPUs':>4} {'quantize':<15} {'ours s/step':>11} {'compile s':>9} {'peak GiB':>8} "
          f"{'weights GiB':>11} {'f8 GEMMs':>8} {'vs none':>7} {'rel L2':>8} {'scaling':>7} {'efficiency':>10} "
          f"{'orig s/step':>11} {'orig GiB':>8} {'vs orig':>7}")
    for case, count, mode, ours, original in rows:
        o = ours or {}
        r = original or {}
        base = next((b for c, n, m, b, _ in rows if c == case and n == counts[0] and m == mode), None)
        plain = next((b for c, n, m, b, _ in rows if c == case and n == count and m == "none"), None)
        scaling = base["seconds"] / o["seconds"] if ours and base else nan
        efficiency = scaling * counts[0] / count
        vs_none = plain["seconds"] / o["seconds"] if ours and plain else nan
        speedup = r["seconds"] / o["seconds"] if ours and original else nan
        print(f"{case:<17} {count:>4} {mode:<15} {o.get('seconds', nan):>11.3f} {o.get('compile_s', nan):>9.1f} "
              f"{o.get('peak_gib', nan):>8.1f} {o.get('weights_gib', nan):>11.2f} {o.get('fp8_gemms', -1):>8} "
              f"{vs_none:>7.2f} {o.get('rel_l2', nan):>8.1e} {scaling:>7.2f} {efficiency:>10.2f} "
              f"{r.get('seconds', nan):>11.3f} {r.get('peak_gib', nan):>8.1f} {speedup:>7.2f}")
    for case, count, mode, ours, _ in rows:
        if ours and ours.get("blocks"):
            worst = max(range(len(ours["blocks"])), key=lambda i: ours["blocks"][i][1])
            updates = sorted(e[1] for e in ours["blocks"])
            print(f"{case} x{count} {mode}: per-block rel L2 of the update: median {updates[len(updates) // 2]:.2e}, "
                  f"max {updates[-1]:.2e} (block {worst}); of the block output: max "
                  f"{max(e[0] for e in ours['blocks']):.2e}")


if __name__ == "__main__":
    main()
