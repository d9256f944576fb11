"""Time LongCat block-sparse attention on one GPU: ours (whole call and kernel), cuDNN dense, the original.

Sizes: latent grids 24x44x80 (84,480 tokens) and 48x44x80 (168,960 tokens), B=1, 32 heads, D=128,
bf16, 4x4x4 chunks; selection by top-k at sparsity 0.875 / 0.9375 / 0.96875 and by CDF 0.98.
Effective TFLOP/s count the selected blocks only: forward 4*D*cq*ck per selected (query block, key
block) pair, backward 2.5x that (the flash-attention convention). "Extra memory" is what a call
allocates beyond its inputs: for ours XLA's compiled temp + output bytes, for the original PyTorch's
peak allocation above the inputs. Times are medians of event-synchronised repeats after warm-up.

    python3 benchmarks/bsa_attention.py [--reference PATH_TO_ORIGINAL_CHECKOUT] [--sizes 24x44x80,48x44x80]

`--reference` imports `longcat_video.block_sparse_attention.bsa_interface.flash_attn_bsa_3d` from
PATH (needs torch, triton, einops); without it the original's columns stay empty.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave memory for PyTorch

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from kernels import BSAParams, KernelConfig, bsa_attention, pallas_triton, reference, select_blocks, to_chunk_order  # noqa: E402  # noqa: E402
from kernels.sparse_attention import FORWARD_KERNELS, sparse_attention_with_lse  # noqa: E402
from longcat_jax.metrics import rel_l2

log = logging.getLogger("bsa_benchmark")

MODES = {
    "topk 0.875": BSAParams(sparsity=0.875),
    "topk 0.9375": BSAParams(sparsity=0.9375),
    "topk 0.96875": BSAParams(sparsity=0.96875),
    "cdf 0.98": BSAParams(sparsity=None, cdf_threshold=0.98),
}


def time_jax(fn, *args, warmup: int = 2, trials: int = 7, calls: int = 3) -> float:
    """Median milliseconds per call; each trial runs `calls` back-to-back calls and synchronises once.

    Calls slower than 0.2 s get 3 single-call trials, to keep the whole run inside its time limit.
    """
    start = time.perf_counter()
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    if (time.perf_counter() - start) / warmup > 0.2:
        trials, calls = 3, 1
    samples = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(calls):
            result = fn(*args)
        jax.block_until_ready(result)
        samples.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(samples)


def extra_bytes_jax(jitted, *args) -> int:
    """Temp + output bytes of the compiled call: the memory it needs beyond its inputs."""
    analysis = jitted.lower(*args).compile().memory_analysis()
    return int(analysis.temp_size_in_bytes + analysis.output_size_in_bytes)


class Original:
    """The original Triton BSA (PyTorch), imported from a checkout of LongCat-Video."""

    def __init__(self, path: str):
        sys.path.insert(0, str(Path(path).resolve()))
        import torch
        from longcat_video.block_sparse_attention.bsa_interface import flash_attn_bsa_3d
        from triton.testing import do_bench

        self.torch, self.do_bench, self.fn = torch, do_bench, flash_attn_bsa_3d

    def tensors(self, *arrays):
        """jax [B, S, H, D] arrays -> torch [B, H, S, D] contiguous cuda tensors (the original's layout)."""
        torch = self.torch
        return [torch.from_dlpack(a).permute(0, 2, 1, 3).contiguous() for a in arrays]

    def run(self, q, k, v, do, latent, params: BSAParams, backward: bool):
        torch = self.torch
        call = lambda: self.fn(  # noqa: E731
            q, k, v, latent, latent, sparsity=params.sparsity, cdf_threshold=params.cdf_threshold,
            chunk_3d_shape_q=list(params.chunk_3d_shape_q), chunk_3d_shape_k=list(params.chunk_3d_shape_k),
        )
        result = {}
        try:
            with torch.no_grad():
                call()
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                out = call()
                torch.cuda.synchronize()
                result["extra_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
                result["fwd_ms"] = self.do_bench(call, warmup=50, rep=200, return_mode="median")
            result["out"] = out
            if backward:
                for x in (q, k, v):
                    x.requires_grad_(True)
                out = call()
                grad = lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True)  # noqa: E731
                result["bwd_ms"] = self.do_bench(grad, warmup=50, rep=200, return_mode="median")
                for x in (q, k, v):
                    x.requires_grad_(False)
                del out
        except Exception as error:  # the original's CDF mode fails to compile on current PyTorch
            result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            log.warning("original failed: %s", result["error"])
        return result


def sweep(q, k, v, indices, counts, block, do, backward) -> tuple[pallas_triton.TritonConfig, list[str]]:
    """Time the kernels over launch settings; returns the best config and the report lines."""
    lines, best_fwd, best_bwd = [], None, None
    for warps, stages in ((4, 2), (4, 3), (8, 2)):
        config = pallas_triton.TritonConfig(num_warps=warps, num_stages=stages)
        triton = KernelConfig(forward="triton", triton=config)
        fwd = jax.jit(lambda *a, c=triton: sparse_attention_with_lse(*a, block, block, c))
        ms = time_jax(fwd, q, k, v, indices, counts)
        lines.append(f"fwd warps={warps} stages={stages}: {ms:.3f} ms")
        best_fwd = min(best_fwd or (ms, config), (ms, config), key=lambda t: t[0])
    if not backward:
        return best_fwd[1], lines
    best = KernelConfig(forward="triton", triton=best_fwd[1])
    out, lse = jax.jit(lambda *a: sparse_attention_with_lse(*a, block, block, best))(q, k, v, indices, counts)
    for warps, stages in ((4, 2), (4, 3)):
        config = dataclasses.replace(best_fwd[1], bwd_num_warps=warps, bwd_num_stages=stages)
        bwd = jax.jit(lambda *a, c=config: pallas_triton.triton_backward(*a, block, block, c))
        ms = time_jax(bwd, q, k, v, indices, counts, out, lse, do)
        lines.append(f"bwd warps={warps} stages={stages}: {ms:.3f} ms")
        best_bwd = min(best_bwd or (ms, config), (ms, config), key=lambda t: t[0])
    return best_bwd[1], lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", help="path of a checkout of the original LongCat-Video repository")
    parser.add_argument("--sizes", default="24x44x80,48x44x80", help="latent grids TxHxW, comma-separated")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--forward", default="auto", choices=FORWARD_KERNELS,
                        help="our forward kernel (auto: the Mosaic GPU one on Hopper, else the Triton one)")
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="first time the kernels over launch settings")
    parser.add_argument("--check", action="store_true", help="compare our kernel with the jnp reference")
    parser.add_argument("--json", help="write all numbers to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    original = Original(args.reference) if args.reference else None
    backward = not args.no_backward
    device = jax.devices()[0].device_kind
    log.info("device %s, jax %s", device, jax.__version__)
    rows, records = [], []
    config = KernelConfig(forward=args.forward)
    for size in args.sizes.split(","):
        latent = tuple(int(n) for n in size.split("x"))
        tokens = latent[0] * latent[1] * latent[2]
        keys = jax.random.split(jax.random.key(tokens), 4)
        shape = (1, tokens, args.heads, args.head_dim)
        q, k, v, do = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys)
        dense = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"))
        dense_ms = time_jax(dense, q, k, v)
        dense_flops = 4 * tokens * tokens * args.head_dim * args.heads
        rows.append((size, "dense cuDNN", f"{dense_ms:.2f}", f"{dense_flops / dense_ms / 1e9:.0f}", "", "", "", ""))
        torch_inputs = original.tensors(q, k, v, do) if original else None
        if args.sweep and size == args.sizes.split(",")[0]:
            params = MODES["topk 0.9375"]
            block = params.chunk_size_q
            chunk = jax.jit(lambda x, p=params: to_chunk_order(x, latent, p.chunk_3d_shape_q))
            qc, kc, vc, doc = (chunk(x) for x in (q, k, v, do))
            indices, counts = jax.jit(lambda a, b, p=params: select_blocks(a, b, p))(qc, kc)
            triton_config, lines = sweep(qc, kc, vc, indices, counts, block, doc, backward)
            config = dataclasses.replace(config, triton=triton_config)
            for line in lines:
                log.info("sweep %s", line)
            log.info("sweep picked %s", config)
            del qc, kc, vc, doc, indices, counts
        for mode in args.modes.split(","):
            params = MODES[mode]
            block = params.chunk_size_q
            log.info("%s %s", size, mode)
            chunk = jax.jit(lambda x, p=params: to_chunk_order(x, latent, p.chunk_3d_shape_q))
            qc, kc, vc, doc = (chunk(x) for x in (q, k, v, do))
            select = jax.jit(lambda a, b, p=params: select_blocks(a, b, p, backend="pallas"))
            indices, counts = select(qc, kc)
            pairs = int(jnp.sum(counts))
            flops = 4 * args.head_dim * block * block * pairs
            whole = jax.jit(lambda q, k, v, p=params, c=config: bsa_attention(
                q, k, v, latent, latent, p, backend="pallas", kernel_config=c))
            fwd = jax.jit(lambda *a: sparse_attention_with_lse(*a, block, block, config))
            record = {"size": size, "mode": mode, "pairs": pairs, "flops_fwd": flops}
            record["whole_ms"] = time_jax(whole, q, k, v)
            record["kernel_ms"] = time_jax(fwd, qc, kc, vc, indices, counts)
            record["whole_extra_gib"] = extra_bytes_jax(whole, q, k, v) / 2**30
            record["selection_ms"] = time_jax(select, qc, kc)
            select_xla = jax.jit(lambda a, b, p=params: select_blocks(a, b, p, backend="reference"))
            record["selection_xla_ms"] = time_jax(select_xla, qc, kc)
            if params.cdf_threshold is None:
                record["selection_matches_xla"] = bool(jnp.all(select_xla(qc, kc)[0] == indices))
            if backward:
                out, lse = fwd(qc, kc, vc, indices, counts)
                bwd = jax.jit(lambda *a: pallas_triton.triton_backward(*a, block, block, config.triton))
                record["kernel_bwd_ms"] = time_jax(bwd, qc, kc, vc, indices, counts, out, lse, doc)
                train = jax.jit(lambda q, k, v, do: jax.vjp(whole, q, k, v)[1](do))
                record["whole_fwd_bwd_ms"] = time_jax(train, q, k, v, do)
            if args.check and mode == "topk 0.9375":
                ours = fwd(qc, kc, vc, indices, counts)[0]
                ref = jax.jit(lambda *a: reference.blocked_attention(*a, block, block))(qc, kc, vc, indices, counts)
                record["rel_l2_vs_reference"] = rel_l2(ours, ref)
            if original:
                result = original.run(*torch_inputs, latent, params, backward)
                for key in ("fwd_ms", "bwd_ms", "extra_gib", "error"):
                    if key in result:
                        record[f"original_{key}"] = result[key]
                if args.check and "out" in result:
                    theirs = jnp.from_dlpack(result["out"].permute(0, 2, 1, 3).contiguous())
                    record["rel_l2_vs_original"] = rel_l2(jax.jit(whole)(q, k, v), theirs)
            records.append(record)
            log.info("%s", {k: v for k, v in record.items()})
            orig_ms = record.get("original_fwd_ms")
            rows.append((
                size, f"ours {mode}", f"{record['whole_ms']:.2f} / {record['kernel_ms']:.2f}",
                f"{flops / record['kernel_ms'] / 1e9:.0f}",
                f"{orig_ms:.2f}" if orig_ms else record.get("original_error", "-")[:40],
                f"{orig_ms / record['whole_ms']:.2f}x" if orig_ms else "-",
                (f"{record['kernel_bwd_ms']:.2f} / {record['whole_fwd_bwd_ms'] - record['whole_ms']:.2f} / "
                 f"{record.get('original_bwd_ms', float('nan')):.2f}" if backward else "-"),
                f"{record['whole_extra_gib']:.2f} / {record.get('original_extra_gib', float('nan')):.2f}",
            ))
            log.info("row | %s |", " | ".join(rows[-1]))
            if args.json:
                Path(args.json).write_text(json.dumps({"device": device, "config": str(config), "records": records}))
            del qc, kc, vc, doc, indices, counts
    header = ("grid", "what", "ms whole / kernel", "kernel TFLOP/s", "original ms", "speed-up",
              "bwd ms kernel / whole / orig", "extra GiB ours / orig")
    print(f"device: {device}; kernel config: {config}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
