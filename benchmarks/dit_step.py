"""One DiT denoising step (one forward, bf16) of the real 13.6B LongCat DiT, ours next to the original.

Cases (token grids of the latent after 1x2x2 patching):
  refine168k_bsa   48x44x80 = 168,960 tokens, B=1, BSA 0.9375 (720p refinement, frames doubled)
  refine84k_bsa    24x44x80 =  84,480 tokens, B=1, BSA 0.9375 (720p spatial-only refinement)
  refine84k_dense  24x44x80, B=1, dense attention
  t2v480p_dense    24x30x52 =  37,440 tokens, B=2 (both CFG branches), dense

Every case runs in its own subprocess so peak device memory is that case's alone. Weights are random,
made on the device (no checkpoint transfer). With `--reference PATH` (a checkout of the original
LongCat-Video repository, never committed here) the original PyTorch model runs the same cases on the
same GPU: its Triton BSA, and cuDNN SDPA where it would call flash-attn. Prints seconds per step
(median after warm-up), compile time, peak memory, and the ratio original / ours.

    python benchmarks/dit_step.py --reference /path/to/LongCat-Video
    python benchmarks/dit_step.py --cases refine84k_bsa --depth 4        # quick look
    python benchmarks/dit_step.py --cases refine168k_bsa --context-parallel 1,2,4   # scaling over GPUs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

CASES = {
    "refine84k_bsa": dict(grid=(24, 44, 80), batch=1, bsa=True),
    "refine168k_bsa": dict(grid=(48, 44, 80), batch=1, bsa=True),
    "refine84k_dense": dict(grid=(24, 44, 80), batch=1, bsa=False),
    "t2v480p_dense": dict(grid=(24, 30, 52), batch=2, bsa=False),
}
BSA_PARAMS = {"sparsity": 0.9375, "cdf_threshold": None, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [4, 4, 4]}
TEXT_LEN = 512


def _real_config(depth: int, bsa: bool) -> dict:
    return {
        "in_channels": 16, "out_channels": 16, "hidden_size": 4096, "depth": depth, "num_heads": 32,
        "caption_channels": 4096, "mlp_ratio": 4, "adaln_tembed_dim": 512, "frequency_embedding_size": 256,
        "patch_size": [1, 2, 2], "enable_bsa": bsa, "bsa_params": BSA_PARAMS if bsa else None,
        "text_tokens_zero_pad": True,
    }


_START = time.perf_counter()


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


def run_ours(case: dict, depth: int, warmup: int, iters: int, context_parallel: int) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from longcat_jax.models.dit.config import DiTConfig
    from longcat_jax.sharding import shard_dit
    from longcat_jax.tiny import random_dit

    config = DiTConfig.from_dict(_real_config(depth, case["bsa"]))
    t, h, w = case["grid"]
    b = case["batch"]
    # Drawn on the device one parameter at a time (one small program per distinct shape; one program drawing
    # all 13.6B values at once took 320 s on an H200), then, for several devices, replicated over the mesh with
    # the tokens split over it (Ulysses all-to-all around self attention).
    model = random_dit(config, dtype=jnp.bfloat16, draw_on_device=True)
    plan = shard_dit(model, context_parallel) if context_parallel > 1 else None
    devices = list(plan.mesh.devices.flat) if plan else jax.local_devices()[:1]
    jax.block_until_ready(nnx.state(model))
    _log("random weights made on the device")
    num_params = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
    keys = jax.random.split(jax.random.key(2), 2)
    latents = jax.random.normal(keys[0], (b, 16, t, 2 * h, 2 * w), jnp.bfloat16)
    text = jax.random.normal(keys[1], (b, 1, TEXT_LEN, 4096), jnp.bfloat16)
    mask = (jnp.arange(TEXT_LEN)[None, :] < jnp.array([200, 120][:b])[:, None]).astype(jnp.int32)
    timestep = jnp.full((b,), 700.0, jnp.float32)
    if plan:
        latents, text, mask, timestep = jax.device_put((latents, text, mask, timestep), plan.replicated)

    graphdef, state = nnx.split(model)

    def step(state, latents, timestep, text, mask):
        return nnx.merge(graphdef, state)(latents, timestep, text, mask)

    start = time.perf_counter()
    lowered = jax.jit(step).lower(state, latents, timestep, text, mask)
    _log(f"lowered in {time.perf_counter() - start:.1f} s")
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    _log(f"compiled in {compile_s:.1f} s (lowering included)")
    seconds = _median_time(lambda: compiled(state, latents, timestep, text, mask).block_until_ready(), warmup, iters)
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in devices]
    return {"seconds": seconds, "compile_s": compile_s, "peak_gib": max(peaks) / 2**30,
            "params_b": num_params / 1e9, "device": str(devices[0].device_kind), "devices": len(devices)}


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

    config = _real_config(depth, case["bsa"])
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
        result = run_ours(case, args.depth, args.warmup, args.iters, args.context_parallel)
    else:
        result = run_original(case, args.depth, args.warmup, args.iters, args.reference)
    print("RESULT " + json.dumps(result), flush=True)


def run_child(cmd: list[str], label: str, timeout: float | None = None) -> dict | None:
    """Runs one benchmark case in its own process (so its device peak is its own), echoing its progress lines.

    Returns the dict of the child's `RESULT {...}` line, or None, printing the child's last output, when it
    failed or ran past `timeout` seconds (it is then killed, also while it prints nothing).
    """
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
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
    if result is None:
        killed = " (killed after %g s)" % timeout if timeout and proc.returncode == -9 else ""
        print(f"[{label}] failed{killed}:\n{''.join(tail)}", flush=True)
    return result


def _spawn(case: str, impl: str, args) -> dict | None:
    cmd = [sys.executable, __file__, "--child", "--case", case, "--impl", impl, "--depth", str(args.depth),
           "--warmup", str(args.warmup), "--iters", str(args.iters), "--context-parallel", str(args.context_parallel)]
    if args.reference:
        cmd += ["--reference", args.reference]
    return run_child(cmd, f"{impl} {case}", args.case_timeout)


def main() -> None:
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
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "original"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        counts = [int(n) for n in args.context_parallel.split(",")]
    except ValueError:
        parser.error(f"--context-parallel takes device counts like 1,2,4; got {args.context_parallel!r}")
    if args.child:
        args.context_parallel = counts[0]
        _child(args)
        return
    rows = []
    for case in args.cases.split(","):
        if case not in CASES:
            parser.error(f"unknown case {case!r}; choose from {', '.join(CASES)}")
        original = _spawn(case, "original", args) if args.reference else None
        for count in counts:
            ours = _spawn(case, "ours", argparse.Namespace(**{**vars(args), "context_parallel": count}))
            rows.append((case, count, ours, original))
            print(f"{case} x{count}: ours={ours} original={original}", flush=True)
    nan = float("nan")
    print(f"\ndepth {args.depth}, median of {args.iters} after {args.warmup} warm-up; peak GiB: the largest of the "
          f"devices; scaling: speed-up over {counts[0]} device(s) and that divided by the device ratio")
    print(f"{'case':<17} {'GPUs':>4} {'ours s/step':>11} {'compile s':>9} {'peak GiB':>8} {'scaling':>7} "
          f"{'efficiency':>10} {'orig s/step':>11} {'orig GiB':>8} {'vs orig':>7}")
    for case, count, ours, original in rows:
        o = ours or {}
        r = original or {}
        base = next((b for c, n, b, _ in rows if c == case and n == counts[0]), None)
        scaling = base["seconds"] / o["seconds"] if ours and base else nan
        efficiency = scaling * counts[0] / count
        speedup = r["seconds"] / o["seconds"] if ours and original else nan
        print(f"{case:<17} {count:>4} {o.get('seconds', nan):>11.3f} {o.get('compile_s', nan):>9.1f} "
              f"{o.get('peak_gib', nan):>8.1f} {scaling:>7.2f} {efficiency:>10.2f} {r.get('seconds', nan):>11.3f} "
              f"{r.get('peak_gib', nan):>8.1f} {speedup:>7.2f}")


if __name__ == "__main__":
    main()
