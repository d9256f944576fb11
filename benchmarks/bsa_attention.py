"""Time LongCat block-sparse attention on one GPU: ours (whole call and kernel), dense, the original; on random
and on structured (video-like) inputs, with the kept fraction of key blocks and the error against dense attention.

Sizes: latent grids 24x44x80 (84,480 tokens) and 48x44x80 (168,960 tokens), B=1, 32 heads, D=128,
bf16, 4x4x4 chunks; selection by top-k at sparsity 0.875 / 0.9375 / 0.96875 and by CDF 0.9 / 0.98.
Effective TFLOP/s count the selected blocks only: forward 4*D*cq*ck per selected (query block, key
block) pair, backward 2.5x that (the flash-attention convention). "Extra memory" is what a call
allocates beyond its inputs: for ours XLA's compiled temp + output bytes, for the original PyTorch's
peak allocation above the inputs. Times are medians of event-synchronised repeats after warm-up.

Inputs (`--inputs`, comma-separated): `random` (normal q, k, v: flat block scores, the earlier tables' inputs) and
`structured` (benchmarks/bsa_inputs.py: a smooth spatio-temporal field with moving objects, through the DiT's
LayerNorm, a random qkv projection, its q/k RMSNorm and 3D RoPE). For each input kind and selection a second table
gives the kept fraction of key blocks (from the selection's counts) and the
relative L2 error of our whole call against dense attention (cuDNN, bf16, on the GPU), over 1 in 7 query tokens.

    python3 benchmarks/bsa_attention.py [--reference PATH_TO_ORIGINAL_CHECKOUT] [--sizes 24x44x80,48x44x80]
                                        [--inputs random,structured] [--modes "topk 0.9375,cdf 0.98"]
    python3 benchmarks/bsa_attention.py --small --inputs random,structured    # CPU, interpreted kernels, an 8x16x16 grid

`--fp8` also times `KernelConfig(fp8=True)` on each selection, in the same run as the bf16 kernel, with its error
against dense attention, in a third table: the whole call (its e4m3 chunking passes included) and the kernel alone on
e4m3 operands quantized before the timed call, as `bsa_forward_kernels.py` times it. `--fp8-key-ranges N` runs it with
`KernelConfig(key_ranges=N)` (one launch per range of key blocks, merged by their log-sum-exps; default: as
`KernelConfig` picks). `--fp8-conditional-rescale T` runs it with `MosaicConfig(conditional_rescale=True,
rescale_threshold=T)` in its launch settings (T = 0: skip only where no row's maximum moved). `--top-k-row-pieces`
gives our whole calls `KernelConfig(top_k_row_pieces=True)`, `--no-top-k-row-pieces` False (default: by the row's
length, `pallas_topk.splits_rows`).

`--key-ranges N` runs our bf16 calls (whole call and kernel) with `KernelConfig(key_ranges=N)`: N plain launches
(default: as `KernelConfig` picks, for the bf16 Mosaic forward one launch with phased walks where a head's K and V
outgrow the L2, `key_ranges.auto_phased_walks`).

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
from bsa_inputs import StructuredInputSpec, parse_grid, structured_qkv  # noqa: E402  # this script's sibling

from kernels import BSAParams, KernelConfig, bsa_attention, pallas_triton, reference, select_blocks, to_chunk_order  # noqa: E402
from kernels.fp8_operands import quantize_operands  # noqa: E402
from kernels.mosaic_config import MAX_RESCALE_THRESHOLD  # noqa: E402
from kernels.sparse_attention import (  # noqa: E402
    BACKWARD_KERNELS,
    FORWARD_KERNELS,
    fp8_sparse_attention_with_lse,
    sparse_attention_backward,
    sparse_attention_with_lse,
)
from longcat_jax.cli_logging import setup_cli_logging  # noqa: E402
from longcat_jax.errors import ConfigError  # noqa: E402
from longcat_jax.metrics import rel_l2  # noqa: E402
from longcat_jax.models.dit.attention import dense_attention  # noqa: E402

log = logging.getLogger("bsa_benchmark")

MODES = {
    "topk 0.875": BSAParams(sparsity=0.875),
    "topk 0.9375": BSAParams(sparsity=0.9375),
    "topk 0.96875": BSAParams(sparsity=0.96875),
    "cdf 0.9": BSAParams(sparsity=None, cdf_threshold=0.9),
    "cdf 0.98": BSAParams(sparsity=None, cdf_threshold=0.98),
}
INPUT_KINDS = ("random", "structured")
ERROR_TOKEN_STRIDE = 7  # error vs dense over every 7th query token (host float64 time); 7 divides no grid side, so
# the sample holds every position within a chunk
SMALL = dict(sizes="8x16x16", heads=2, head_dim=64)  # --small: 2,048 tokens, 32 key blocks, seconds on a CPU


@dataclasses.dataclass(frozen=True)
class Timer:
    """Median milliseconds per call; each trial runs `calls` back-to-back calls and synchronises once.

    Calls slower than 0.2 s get at most 3 single-call trials, to keep the whole run inside its time limit. warmup=0
    (the CPU smoke runs, whose interpreted times say nothing of a GPU's) times the first call, compilation included.
    """

    warmup: int = 2
    trials: int = 7
    calls: int = 3

    def __call__(self, fn, *args) -> float:
        trials, calls = self.trials, self.calls
        start = time.perf_counter()
        for _ in range(self.warmup):
            jax.block_until_ready(fn(*args))
        if self.warmup and (time.perf_counter() - start) / self.warmup > 0.2:
            trials, calls = min(trials, 3), 1
        samples = []
        for _ in range(trials):
            start = time.perf_counter()
            for _ in range(calls):
                result = fn(*args)
            jax.block_until_ready(result)
            samples.append((time.perf_counter() - start) / calls * 1e3)
        return statistics.median(samples)


def extra_bytes(compiled) -> int:
    """Temp + output bytes of a compiled call: the memory it needs beyond its inputs."""
    analysis = compiled.memory_analysis()
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


def sweep(q, k, v, indices, counts, block, do, backward, timer) -> tuple[pallas_triton.TritonConfig, list[str]]:
    """Time the kernels over launch settings; returns the best config and the report lines."""
    lines, best_fwd, best_bwd = [], None, None
    for warps, stages in ((4, 2), (4, 3), (8, 2)):
        config = pallas_triton.TritonConfig(num_warps=warps, num_stages=stages)
        triton = KernelConfig(forward="triton", triton=config)
        fwd = jax.jit(lambda *a, c=triton: sparse_attention_with_lse(*a, block, block, c))
        ms = timer(fwd, q, k, v, indices, counts)
        lines.append(f"fwd warps={warps} stages={stages}: {ms:.3f} ms")
        best_fwd = min(best_fwd or (ms, config), (ms, config), key=lambda t: t[0])
    if not backward:
        return best_fwd[1], lines
    best = KernelConfig(forward="triton", triton=best_fwd[1])
    out, lse = jax.jit(lambda *a: sparse_attention_with_lse(*a, block, block, best))(q, k, v, indices, counts)
    for warps, stages in ((4, 2), (4, 3)):
        config = dataclasses.replace(best_fwd[1], bwd_num_warps=warps, bwd_num_stages=stages)
        named = KernelConfig(forward="triton", backward="triton", triton=config)
        bwd = jax.jit(lambda *a, c=named: sparse_attention_backward(*a, block, block, c))
        ms = timer(bwd, q, k, v, indices, counts, out, lse, do)
        lines.append(f"bwd warps={warps} stages={stages}: {ms:.3f} ms")
        best_bwd = min(best_bwd or (ms, config), (ms, config), key=lambda t: t[0])
    return best_bwd[1], lines


def make_inputs(kind: str, latent, heads: int, head_dim: int, spec: StructuredInputSpec):
    """q, k, v, do [1, T*H*W, heads, head_dim] bf16 in raster order; `do` (the backward's cotangent) is random normal
    for both kinds, and the random kind's arrays are the earlier tables' (same keys)."""
    tokens = latent[0] * latent[1] * latent[2]
    keys = jax.random.split(jax.random.key(tokens), 4)
    shape = (1, tokens, heads, head_dim)
    do = jax.random.normal(keys[3], shape, jnp.bfloat16)
    if kind == "random":
        q, k, v = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys[:3])
        return q, k, v, do
    start = time.perf_counter()
    q, k, v = jax.block_until_ready(structured_qkv(jax.random.key(tokens), latent, spec))
    log.info("structured inputs made in %.2f s (with compilation)", time.perf_counter() - start)
    return q, k, v, do


def error_vs_dense(out: jax.Array, dense_out: jax.Array, stride: int) -> float:
    """Relative L2 of our output against dense attention over every `stride`-th query token ([B, S, H, D])."""
    return rel_l2(out[:, ::stride], dense_out[:, ::stride])


def measure_mode(bench, size, latent, kind, mode, q, k, v, do, dense_out, torch_inputs) -> dict:
    """One selection on one input: times, kept fraction, error against dense, the original's figures."""
    args, config, backend, timer = bench.args, bench.config, bench.backend, bench.timer
    params = MODES[mode]
    block = params.chunk_size_q
    kernel_config = config.interpreted() if backend == "pallas_interpret" else config
    chunk = jax.jit(lambda x, p=params: to_chunk_order(x, latent, p.chunk_3d_shape_q))
    qc, kc, vc, doc = (chunk(x) for x in (q, k, v, do))
    select = jax.jit(lambda a, b, p=params: select_blocks(a, b, p, backend=backend))
    indices, counts = select(qc, kc)
    pairs = int(jnp.sum(counts))
    num_q_blocks, num_k_blocks = qc.shape[1] // block, kc.shape[1] // params.chunk_size_k
    flops = 4 * args.head_dim * block * block * pairs
    whole = jax.jit(lambda q, k, v, p=params, c=config: bsa_attention(
        q, k, v, latent, latent, p, backend=backend, kernel_config=c))
    fwd = jax.jit(lambda *a: sparse_attention_with_lse(*a, block, block, kernel_config))
    record = {"size": size, "inputs": kind, "mode": mode, "pairs": pairs, "flops_fwd": flops}
    record["kept_fraction"] = pairs / (counts.shape[0] * counts.shape[1] * num_q_blocks * num_k_blocks)
    whole_compiled = whole.lower(q, k, v).compile()
    record["whole_extra_gib"] = extra_bytes(whole_compiled) / 2**30
    record["whole_ms"] = timer(whole_compiled, q, k, v)
    record["kernel_ms"] = timer(fwd, qc, kc, vc, indices, counts)
    record["selection_ms"] = timer(select, qc, kc)
    select_xla = jax.jit(lambda a, b, p=params: select_blocks(a, b, p, backend="reference"))
    record["selection_xla_ms"] = timer(select_xla, qc, kc)
    if params.cdf_threshold is None:
        record["selection_matches_xla"] = bool(jnp.all(select_xla(qc, kc)[0] == indices))
    ours = whole_compiled(q, k, v)
    record["rel_l2_vs_dense"] = error_vs_dense(ours, dense_out, bench.error_stride)
    if bench.backward:
        out, lse = fwd(qc, kc, vc, indices, counts)
        grads = {}
        for name in bench.backward_kernels:  # the kernels alone, then jitted forward + backward of the whole call
            named = dataclasses.replace(kernel_config, backward=name)
            named.check_backward(qc, kc, vc, block, block)  # refuses what the Mosaic kernels cannot run, up front
            bwd = jax.jit(lambda *a, c=named: sparse_attention_backward(*a, block, block, c))
            record[f"kernel_bwd_ms_{name}"] = timer(bwd, qc, kc, vc, indices, counts, out, lse, doc)
            if args.check:
                grads[name] = bwd(qc, kc, vc, indices, counts, out, lse, doc)
            whole_config = dataclasses.replace(config, backward=name)
            whole_b = jax.jit(lambda q, k, v, p=params, c=whole_config: bsa_attention(
                q, k, v, latent, latent, p, backend=backend, kernel_config=c))
            train = jax.jit(lambda q, k, v, do, f=whole_b: jax.vjp(f, q, k, v)[1](do))
            record[f"whole_fwd_bwd_ms_{name}"] = timer(train, q, k, v, do)
        record["kernel_bwd_ms"] = record[f"kernel_bwd_ms_{bench.backward_kernels[0]}"]
        record["whole_fwd_bwd_ms"] = record[f"whole_fwd_bwd_ms_{bench.backward_kernels[0]}"]
        if {"mosaic", "triton"} <= grads.keys():  # the largest relative L2 of dq, dk, dv between the two kernels
            record["bwd_rel_l2_mosaic_vs_triton"] = max(rel_l2(a, b) for a, b in zip(grads["mosaic"], grads["triton"]))
    if args.fp8:
        measure_fp8(record, bench, latent, params, (q, k, v), (qc, kc, vc, indices, counts), dense_out)
    if args.check and mode == "topk 0.9375":
        ours_kernel = fwd(qc, kc, vc, indices, counts)[0]
        ref = jax.jit(lambda *a: reference.blocked_attention(*a, block, block))(qc, kc, vc, indices, counts)
        record["rel_l2_vs_reference"] = rel_l2(ours_kernel, ref)
    if bench.original:
        result = bench.original.run(*torch_inputs, latent, params, bench.backward)
        for key in ("fwd_ms", "bwd_ms", "extra_gib", "error"):
            if key in result:
                record[f"original_{key}"] = result[key]
        if args.check and "out" in result:
            theirs = jnp.from_dlpack(result["out"].permute(0, 2, 1, 3).contiguous())
            record["rel_l2_vs_original"] = rel_l2(ours, theirs)
    return record


def backward_cell(record: dict, kernels: tuple[str, ...]) -> str:
    """The backward column: kernel ms / whole call's backward ms (each backward kernel, named where several were
    timed) / the original's backward ms."""
    ours = [
        ("" if len(kernels) == 1 else f"{name} ")
        + f"{record[f'kernel_bwd_ms_{name}']:.2f} / {record[f'whole_fwd_bwd_ms_{name}'] - record['whole_ms']:.2f}"
        for name in kernels
    ]
    return ", ".join(ours) + f" / {record.get('original_bwd_ms', float('nan')):.2f}"


def timing_row(record: dict, backward_kernels: tuple[str, ...]) -> tuple[str, ...]:
    """One row of the timing table (the earlier tables' columns); backward_kernels: those timed (none: "-")."""
    orig_ms = record.get("original_fwd_ms")
    return (
        record["size"], f"ours {record['mode']}", f"{record['whole_ms']:.2f} / {record['kernel_ms']:.2f}",
        f"{record['flops_fwd'] / record['kernel_ms'] / 1e9:.0f}",
        f"{orig_ms:.2f}" if orig_ms else record.get("original_error", "-")[:40],
        f"{orig_ms / record['whole_ms']:.2f}x" if orig_ms else "-",
        backward_cell(record, backward_kernels) if backward_kernels else "-",
        f"{record['whole_extra_gib']:.2f} / {record.get('original_extra_gib', float('nan')):.2f}",
    )


def selection_row(record: dict, dense_ms: float) -> tuple[str, ...]:
    """One row of the selection table: kept fraction, error against dense, times."""
    return (
        record["size"], record["inputs"], record["mode"], f"{record['kept_fraction']:.4f}",
        f"{record['rel_l2_vs_dense']:.2e}", f"{record['whole_ms']:.2f}",
        f"{dense_ms:.2f}", f"{dense_ms / record['whole_ms']:.2f}x",
    )


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def measure_fp8(record: dict, bench, latent, params: BSAParams, raster_qkv, chunked, dense_out) -> None:
    """Adds the FP8 kernel's whole-call and kernel times and its error against dense attention (and against the bf16
    kernel's output) to `record`."""
    block = params.chunk_size_q
    fp8 = dataclasses.replace(bench.config, fp8=True, key_ranges=bench.args.fp8_key_ranges)
    if bench.args.fp8_conditional_rescale is not None:
        fp8 = dataclasses.replace(fp8, mosaic_fp8=dataclasses.replace(
            fp8.mosaic_fp8, conditional_rescale=True, rescale_threshold=bench.args.fp8_conditional_rescale))
    kernel_config = fp8.interpreted() if bench.backend == "pallas_interpret" else fp8
    whole = jax.jit(lambda q, k, v: bsa_attention(q, k, v, latent, latent, params, backend=bench.backend,
                                                  kernel_config=fp8))
    q, k, v, indices, counts = chunked
    operands = jax.jit(lambda q, k, v: quantize_operands(q, k, v, block, block))(q, k, v)
    fwd = jax.jit(lambda o, i, c: fp8_sparse_attention_with_lse(o, i, c, kernel_config))
    record["fp8_whole_ms"] = bench.timer(whole, *raster_qkv)
    record["fp8_kernel_ms"] = bench.timer(fwd, operands, indices, counts)
    ours = whole(*raster_qkv)
    record["fp8_rel_l2_vs_dense"] = error_vs_dense(ours, dense_out, bench.error_stride)
    bf16 = jax.jit(lambda q, k, v: bsa_attention(q, k, v, latent, latent, params, backend=bench.backend,
                                                 kernel_config=bench.config))(*raster_qkv)
    record["fp8_rel_l2_vs_bf16"] = rel_l2(ours, bf16)


def fp8_row(record: dict) -> tuple[str, ...]:
    """One row of the FP8 table: its times against the bf16 kernel's (same run), its errors."""
    return (
        record["size"], record["inputs"], record["mode"],
        f"{record['fp8_whole_ms']:.2f} / {record['fp8_kernel_ms']:.2f}",
        f"{record['flops_fwd'] / record['fp8_kernel_ms'] / 1e9:.0f}",
        f"{record['whole_ms'] / record['fp8_whole_ms']:.2f}x / {record['kernel_ms'] / record['fp8_kernel_ms']:.2f}x",
        f"{record['fp8_rel_l2_vs_dense']:.2e}", f"{record['rel_l2_vs_dense']:.2e}", f"{record['fp8_rel_l2_vs_bf16']:.2e}",
    )


@dataclasses.dataclass
class Bench:
    """The run's settings, shared by every measurement."""

    args: argparse.Namespace
    config: KernelConfig
    backend: str
    timer: Timer
    original: Original | None
    backward_kernels: tuple[str, ...]  # our backward kernels to time (`KernelConfig.backward`), the first in the columns
    error_stride: int

    @property
    def backward(self) -> bool:
        """Whether the backward is timed (ours and the original's)."""
        return bool(self.backward_kernels)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", help="path of a checkout of the original LongCat-Video repository")
    parser.add_argument("--sizes", default="24x44x80,48x44x80", help="latent grids TxHxW, comma-separated")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    parser.add_argument("--inputs", default="random", help="comma-separated subset of " + ", ".join(INPUT_KINDS))
    parser.add_argument("--qk-alignment", type=float, default=StructuredInputSpec.qk_alignment,
                        help="structured inputs: how much of the key projection is the query's")
    parser.add_argument("--qk-norm-weight", type=float, default=StructuredInputSpec.qk_norm_weight,
                        help="structured inputs: the q/k RMSNorm weight (attention logits scale with its square)")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--forward", default="auto", choices=FORWARD_KERNELS,
                        help="our forward kernel (auto: the Mosaic GPU one on Hopper, else the Triton one)")
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--backward", default="auto",
                        help="our backward kernels to time, comma-separated subset of " + ", ".join(BACKWARD_KERNELS)
                             + " (default auto: KernelConfig's choice, the Mosaic GPU kernels on Hopper; with --check "
                             "and both triton and mosaic: the largest rel L2 of dq, dk, dv between them)")
    parser.add_argument("--sweep", action="store_true", help="first time the kernels over launch settings")
    parser.add_argument("--fp8", action="store_true",
                        help="also time KernelConfig(fp8=True) (Hopper, or --small) and its error, in a third table")
    parser.add_argument("--key-ranges", type=int, default=None,
                        help="KernelConfig.key_ranges of our bf16 calls (default: as KernelConfig picks, "
                             "`kernels.key_ranges`)")
    parser.add_argument("--fp8-key-ranges", type=int, default=None,
                        help="with --fp8: KernelConfig.key_ranges of the FP8 call (default: as KernelConfig picks)")
    parser.add_argument("--top-k-row-pieces", action=argparse.BooleanOptionalAction, default=None,
                        help="our calls' top-k kernel holds each row as power-of-two pieces, or (--no-...) as one "
                             "array (KernelConfig.top_k_row_pieces; default: by the row's length)")
    parser.add_argument("--fp8-conditional-rescale", type=float, default=None, metavar="THRESHOLD",
                        help="with --fp8: the FP8 call skips unneeded rescales, its maxima held within THRESHOLD "
                             f"(log2 units, 0 to {MAX_RESCALE_THRESHOLD}; MosaicConfig.conditional_rescale and "
                             "rescale_threshold)")
    parser.add_argument("--check", action="store_true", help="compare our kernel with the jnp reference")
    parser.add_argument("--small", action="store_true",
                        help=f"a CPU run in seconds: grid {SMALL['sizes']}, {SMALL['heads']} heads of {SMALL['head_dim']}, "
                             "kernels in the Pallas interpreter, one timing call each, no backward")
    parser.add_argument("--json", help="write all numbers to this file")
    args = parser.parse_args()
    problems = [f"unknown mode {m!r}" for m in args.modes.split(",") if m not in MODES]
    problems += [f"unknown input kind {kind!r}" for kind in args.inputs.split(",") if kind not in INPUT_KINDS]
    problems += [f"unknown backward kernel {name!r} (choose from {', '.join(BACKWARD_KERNELS)})"
                 for name in args.backward.split(",") if name not in BACKWARD_KERNELS]
    if args.key_ranges is not None and args.key_ranges < 1:
        problems.append(f"--key-ranges must be at least 1, got {args.key_ranges}")
    if args.fp8_key_ranges is not None and not args.fp8:
        problems.append("--fp8-key-ranges sets the FP8 call: give --fp8 with it")
    if args.fp8_key_ranges is not None and args.fp8_key_ranges < 1:
        problems.append(f"--fp8-key-ranges must be at least 1, got {args.fp8_key_ranges}")
    if args.fp8_conditional_rescale is not None and not args.fp8:
        problems.append("--fp8-conditional-rescale sets the FP8 call: give --fp8 with it")
    if args.fp8_conditional_rescale is not None and not 0 <= args.fp8_conditional_rescale <= MAX_RESCALE_THRESHOLD:
        problems.append(f"--fp8-conditional-rescale must be in [0, {MAX_RESCALE_THRESHOLD}], "
                        f"got {args.fp8_conditional_rescale:g}")
    if args.small and (args.reference or args.sweep):
        problems.append("--small runs on the CPU: --reference and --sweep need a GPU")
    if problems:
        parser.error("; ".join(problems) + f" (modes: {', '.join(MODES)}; input kinds: {', '.join(INPUT_KINDS)})")
    if args.small:
        args.sizes, args.heads, args.head_dim, args.no_backward = SMALL["sizes"], SMALL["heads"], SMALL["head_dim"], True
    try:
        args.grids = [parse_grid(size) for size in args.sizes.split(",")]
        args.spec = StructuredInputSpec(hidden_size=args.heads * args.head_dim, num_heads=args.heads,
                                        qk_alignment=args.qk_alignment, qk_norm_weight=args.qk_norm_weight)
    except ConfigError as error:
        parser.error(str(error))
    return args


def main() -> None:
    args = parse_args()
    setup_cli_logging()  # INFO with times (an import may have set up the root logger already)
    bench = Bench(
        args=args, config=KernelConfig(forward=args.forward, top_k_row_pieces=args.top_k_row_pieces,
                                       key_ranges=args.key_ranges),
        backend="pallas_interpret" if args.small else "pallas",
        timer=Timer(warmup=0, trials=1, calls=1) if args.small else Timer(),
        original=Original(args.reference) if args.reference else None,
        backward_kernels=() if args.no_backward else tuple(args.backward.split(",")),
        error_stride=1 if args.small else ERROR_TOKEN_STRIDE,
    )
    device = jax.devices()[0].device_kind
    log.info("device %s, jax %s", device, jax.__version__)
    timing_rows = {kind: [] for kind in args.inputs.split(",")}
    selection_rows, records, fp8_rows = [], [], []
    dense = jax.jit(dense_attention)
    dense_name = "dense cuDNN" if jax.default_backend() == "gpu" else "dense XLA"
    for size, latent in zip(args.sizes.split(","), args.grids):
        tokens = latent[0] * latent[1] * latent[2]
        for kind in timing_rows:
            q, k, v, do = make_inputs(kind, latent, args.heads, args.head_dim, args.spec)
            dense_ms = bench.timer(dense, q, k, v)
            dense_out = dense(q, k, v)
            dense_flops = 4 * tokens * tokens * args.head_dim * args.heads
            timing_rows[kind].append((size, dense_name, f"{dense_ms:.2f}", f"{dense_flops / dense_ms / 1e9:.0f}",
                                      "", "", "", ""))
            torch_inputs = bench.original.tensors(q, k, v, do) if bench.original else None
            if args.sweep and size == args.sizes.split(",")[0] and kind == "random":
                params = MODES["topk 0.9375"]
                chunk = jax.jit(lambda x, p=params: to_chunk_order(x, latent, p.chunk_3d_shape_q))
                qc, kc, vc, doc = (chunk(x) for x in (q, k, v, do))
                indices, counts = jax.jit(lambda a, b, p=params: select_blocks(a, b, p))(qc, kc)
                triton_config, lines = sweep(qc, kc, vc, indices, counts, params.chunk_size_q, doc, bench.backward,
                                             bench.timer)
                bench.config = dataclasses.replace(bench.config, triton=triton_config)
                for line in lines:
                    log.info("sweep %s", line)
                log.info("sweep picked %s", bench.config)
                del qc, kc, vc, doc, indices, counts
            for mode in args.modes.split(","):
                log.info("%s %s %s", size, kind, mode)
                record = measure_mode(bench, size, latent, kind, mode, q, k, v, do, dense_out, torch_inputs)
                record["dense_ms"] = dense_ms
                records.append(record)
                log.info("%s", record)
                timing_rows[kind].append(timing_row(record, bench.backward_kernels))
                selection_rows.append(selection_row(record, dense_ms))
                if args.fp8:
                    fp8_rows.append(fp8_row(record))
                log.info("row | %s |", " | ".join(timing_rows[kind][-1]))
                if args.json:
                    Path(args.json).write_text(json.dumps({
                        "device": device, "config": str(bench.config), "backend": bench.backend,
                        "structured_spec": dataclasses.asdict(args.spec), "error_token_stride": bench.error_stride,
                        "records": records}))
            del q, k, v, do, dense_out, torch_inputs
    header = ("grid", "what", "ms whole / kernel", "kernel TFLOP/s", "original ms", "speed-up",
              "bwd ms kernel / whole / orig", "extra GiB ours / orig")
    print(f"device: {device}; kernel config: {bench.config}")
    for kind, rows in timing_rows.items():
        print(f"\ninputs: {kind}")
        print_table(header, rows)
    print(f"\nselection on each input (error over 1 in {bench.error_stride} query tokens, against {dense_name}; "
          f"structured inputs: {args.spec})")
    print_table(("grid", "inputs", "mode", "kept key blocks", "rel L2 vs dense",
                 "ours whole ms", "dense ms", "dense / ours"), selection_rows)
    if fp8_rows:
        print("\nKernelConfig(fp8=True) against the bf16 kernel in the same run (kernel times on operands quantized "
              "before the timed call)")
        print_table(("grid", "inputs", "mode", "fp8 ms whole / kernel", "fp8 kernel TFLOP/s",
                     "bf16 / fp8 whole / kernel", "fp8 rel L2 vs dense", "bf16 rel L2 vs dense", "fp8 vs bf16"),
                    fp8_rows)


if __name__ == "__main__":
    main()
