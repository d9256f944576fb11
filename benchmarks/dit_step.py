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
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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


def _median_time(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def run_ours(case: dict, depth: int, warmup: int, iters: int, context_parallel: int) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from longcat_jax.models.dit.config import DiTConfig
    from longcat_jax.models.dit.transformer import LongCatDiT

    config = DiTConfig.from_dict(_real_config(depth, case["bsa"]))
    t, h, w = case["grid"]
    b = case["batch"]

    @nnx.jit
    def make_model():
        model = LongCatDiT(config, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
        graphdef, state = nnx.split(model)
        leaves, treedef = jax.tree.flatten(state)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        leaves = [(0.02 * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype) for k, x in zip(keys, leaves)]
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))

    model = make_model()
    num_params = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
    keys = jax.random.split(jax.random.key(2), 2)
    latents = jax.random.normal(keys[0], (b, 16, t, 2 * h, 2 * w), jnp.bfloat16)
    text = jax.random.normal(keys[1], (b, 1, TEXT_LEN, 4096), jnp.bfloat16)
    mask = (jnp.arange(TEXT_LEN)[None, :] < jnp.array([200, 120][:b])[:, None]).astype(jnp.int32)
    timestep = jnp.full((b,), 700.0, jnp.float32)

    graphdef, state = nnx.split(model)

    def step(state, latents, timestep, text, mask):
        return nnx.merge(graphdef, state)(latents, timestep, text, mask)

    if context_parallel > 1:
        from longcat_jax.sharding import context_parallel_forward

        step = context_parallel_forward(step, context_parallel)
    start = time.perf_counter()
    compiled = jax.jit(step).lower(state, latents, timestep, text, mask).compile()
    compile_s = time.perf_counter() - start
    seconds = _median_time(lambda: compiled(state, latents, timestep, text, mask).block_until_ready(), warmup, iters)
    stats = jax.devices()[0].memory_stats() or {}
    return {"seconds": seconds, "compile_s": compile_s, "peak_gib": stats.get("peak_bytes_in_use", 0) / 2**30,
            "params_b": num_params / 1e9, "device": str(jax.devices()[0].device_kind)}


def _install_flash_attn_shim():
    """A stand-in `flash_attn` module running the original's dense calls through cuDNN SDPA."""
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


def _spawn(case: str, impl: str, args) -> dict | None:
    cmd = [sys.executable, __file__, "--child", "--case", case, "--impl", impl, "--depth", str(args.depth),
           "--warmup", str(args.warmup), "--iters", str(args.iters), "--context-parallel", str(args.context_parallel)]
    if args.reference:
        cmd += ["--reference", args.reference]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"[{impl} {case}] failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", file=sys.stderr)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument("--depth", type=int, default=48, help="number of DiT blocks (48 = the real model)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--reference", help="path of a checkout of the original LongCat-Video repository")
    parser.add_argument("--context-parallel", type=int, default=1, help="GPUs to shard the tokens over")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "original"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    rows = []
    for case in args.cases.split(","):
        if case not in CASES:
            parser.error(f"unknown case {case!r}; choose from {', '.join(CASES)}")
        ours = _spawn(case, "ours", args)
        original = _spawn(case, "original", args) if args.reference else None
        rows.append((case, ours, original))
        print(f"{case}: ours={ours} original={original}", flush=True)
    print(f"\ndepth {args.depth}, context parallel {args.context_parallel}, median of {args.iters} after {args.warmup} warm-up")
    print(f"{'case':<17} {'ours s/step':>11} {'compile s':>9} {'peak GiB':>8} {'orig s/step':>11} {'orig GiB':>8} {'speed-up':>8}")
    for case, ours, original in rows:
        o = ours or {}
        r = original or {}
        speedup = r["seconds"] / o["seconds"] if ours and original else float("nan")
        print(f"{case:<17} {o.get('seconds', float('nan')):>11.3f} {o.get('compile_s', float('nan')):>9.1f} "
              f"{o.get('peak_gib', float('nan')):>8.1f} {r.get('seconds', float('nan')):>11.3f} "
              f"{r.get('peak_gib', float('nan')):>8.1f} {speedup:>8.2f}")


if __name__ == "__main__":
    main()
