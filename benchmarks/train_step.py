"""One LoRA training step of the real 13.6B LongCat DiT (random weights), next to the forward step of the same shape.

Cases (token grids of the latent after 1x2x2 patching, batch 1, 512 text tokens):
  t2v480p_dense   24x30x52 = 37,440 tokens: 480p, 93 frames, dense attention (cuDNN)
  refine84k_bsa   24x44x80 = 84,480 tokens: 720p spatial, BSA 0.9375 (gradients through the Pallas kernels' backward,
                  `kernels.sparse_attention`'s custom_vjp: by default the Mosaic GPU ones on Hopper, the Triton ones
                  elsewhere; --bsa-backward as the training config's `bsa.backward`)

Each case runs in its own process (`dit_step.run_child`, killed after --case-timeout) so its peak device memory is
its own. In it: the weights are drawn on the device block by block (`memory_budget._make_dit`; with --quantize each
block's Linears are quantized right after its draw, so the device never holds the bf16 model); then what `python -m
longcat_jax.train` builds: a float32 LoRA of rank 128 (alpha 64) on every attention and FFN Linear of every block
(`attach_trainable_lora`), remat per block as --remat says (`rematerialize_blocks`; default "block", the training default;
"block_keep_attention": the backward recomputes each block but its self attention, whose output and softmax
statistics are kept; "block_and_sublayers": each block, and in its backward its self attention and FFN once more,
the least memory: 83.1 GiB peak on an H200 for the 720p BSA case, 72.1 GiB with --quantize int8), AdamW with the
config's defaults, the batch placed by `Placement`, and the step `longcat_jax.training.step.train_step` itself. The
forward step is the same model's flow-matching loss (`micro_batch_loss`: noise, DiT forward, loss) without gradients,
compiled the same way (`quantized_jit`); train / forward is the ratio the issue's target (at most 3.5) is about.

Reported per case: seconds per step (median of --iters after the first call, which compiles), compile time
(tracing, lowering and XLA's compile of the first call, from jax.monitoring), the first call's wall time, and the
peak device memory of the process after the training steps (the forward runs after them, so a case timeout that
cuts it short leaves the training figures in the log). Weights in bf16 (or --quantize fp8 / int8: the frozen
base's block Linears), LoRA factors and optimiser state in float32.

    python benchmarks/train_step.py                                          # both cases, one after the other
    python benchmarks/train_step.py --concurrent                             # case i on GPU i, at the same time
    python benchmarks/train_step.py --cases refine84k_bsa --quantize int8
    python benchmarks/train_step.py --cases refine84k_bsa --bsa-backward mosaic   # the Mosaic GPU BSA backward
    python benchmarks/train_step.py --small                                  # a 256-wide 2-block DiT, any machine
    python benchmarks/train_step.py --cases t2v480p_dense --remat block_keep_attention   # the attention kept
    python benchmarks/train_step.py --cases refine84k_bsa --remat block_and_sublayers --quantize int8  # 72.1 GiB peak (H200)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

from dit_step import _log, real_config, run_child  # siblings: the progress line, the real DiT's config, a case's process
from memory_budget import _make_dit, _peak_gib  # the weights drawn on the device block by block, the peak memory

from longcat_jax.training.config import BSA_BACKWARDS, REMAT_MODES

CASES = {
    "t2v480p_dense": dict(grid=(24, 30, 52), bsa=None),
    "refine84k_bsa": dict(grid=(24, 44, 80), bsa=0.9375),
}
SMALL_GRID = (4, 8, 8)
TEXT_LEN = 512
TEXT_TOKENS = 200  # real tokens of the caption (the rest is padding, masked)
LORA_RANK = 128
LORA_ALPHA = 64.0
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class _CompileClock:
    """Seconds JAX spent tracing, lowering and compiling since the last `take` (jax.monitoring events)."""

    def __init__(self):
        import jax

        self.seconds = 0.0
        self._lock = threading.Lock()
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, duration: float, **_) -> None:
        if event in COMPILE_EVENTS:
            with self._lock:
                self.seconds += duration

    def take(self) -> float:
        with self._lock:
            seconds, self.seconds = self.seconds, 0.0
        return seconds


def _timed(name: str, call, iters: int, clock: _CompileClock) -> dict:
    """Runs `call` once (it compiles) and `iters` times more; its compile time, first call and median seconds."""
    clock.take()
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    compile_s = clock.take()
    _log(f"{name}: first call {first:.1f} s (compile {compile_s:.1f} s)")
    times = []
    for index in range(iters):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        _log(f"{name} {index + 1}: {times[-1]:.3f} s")
    return {"seconds": statistics.median(times), "times": times, "first_s": first, "compile_s": compile_s}


def run_case(args) -> dict:
    """One case in this process: the training step and the forward step, timed."""
    import jax
    import numpy as np
    from flax import nnx

    from kernels import KernelConfig
    from longcat_jax.models.dit.config import DiTConfig
    from longcat_jax.quantization import check_quantize_supported, quantized_jit
    from longcat_jax.training.batches import Batch
    from longcat_jax.training.config import LoRAConfig, OptimizerConfig, TrainingConfig
    from longcat_jax.training.objective import SigmaSampling
    from longcat_jax.training.placement import Placement
    from longcat_jax.training.remat import rematerialize_blocks
    from longcat_jax.training.step import StepSpec, micro_batch_loss, train_step
    from longcat_jax.training.trainable_lora import attach_trainable_lora, split_trainable

    clock = _CompileClock()
    case = CASES[args.case]
    quantize = None if args.quantize == "none" else args.quantize
    check_quantize_supported(quantize)
    config = DiTConfig.from_dict(real_config(args.depth, case["bsa"], args.small))
    t, h, w = SMALL_GRID if args.small else case["grid"]
    device = jax.local_devices()[0]

    start = time.perf_counter()
    model = _make_dit(config, quantize, None)
    model.set_bsa(model.bsa, backend=model.bsa_backend, kernel_config=KernelConfig(backward=args.bsa_backward))
    frozen_gib = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model))) / 2**30
    lora = LoRAConfig(rank=LORA_RANK, alpha=LORA_ALPHA, targets=("attention", "ffn"))
    targets = attach_trainable_lora(model, lora, seed=0)
    rematerialize_blocks(model, args.remat)
    graphdef, factors, frozen = split_trainable(model)
    placement = Placement()
    factors, frozen = placement.replicated(factors), placement.frozen(frozen)
    nnx.update(model, factors, frozen)
    training = TrainingConfig()
    spec = StepSpec(OptimizerConfig(), training.steps, SigmaSampling(training.sigma_sampling), 0)
    opt_state = placement.replicated(spec.make_optimizer().init(factors))
    jax.block_until_ready((factors, frozen, opt_state))
    lora_gib = sum(x.nbytes for x in jax.tree.leaves(factors)) / 2**30
    state_gib = sum(x.nbytes for x in jax.tree.leaves(opt_state)) / 2**30
    _log(f"{args.case}: model, LoRA ({len(targets)} Linears, rank {LORA_RANK}) and AdamW state made in "
         f"{time.perf_counter() - start:.1f} s: frozen {frozen_gib:.2f} GiB, LoRA {lora_gib:.2f} GiB, "
         f"AdamW state {state_gib:.2f} GiB")

    rng = np.random.default_rng(0)
    shape = (1, 1, config.in_channels, t, 2 * h, 2 * w)  # [A, B, C, T, h, w]: one micro-batch of one clip
    text = np.zeros((1, 1, 1, TEXT_LEN, config.caption_channels), np.float32)
    text[..., :TEXT_TOKENS, :] = rng.standard_normal((TEXT_TOKENS, config.caption_channels), np.float32)
    batch = placement.batch(Batch(
        latent_mean=rng.standard_normal(shape, np.float32),
        latent_std=np.full(shape, 0.05, np.float32),
        text=text,
        mask=(np.arange(TEXT_LEN) < TEXT_TOKENS).astype(np.int32)[None, None],
    ))
    micro = jax.tree.map(lambda x: x[0], batch)
    key = jax.random.key(1)

    forward = quantized_jit(lambda factors, frozen, micro, key: micro_batch_loss(
        nnx.merge(graphdef, factors, frozen), micro, key, spec))
    result = {"case": args.case, "quantize": args.quantize, "remat": args.remat, "bsa_backward": args.bsa_backward,
              "tokens": t * h * w, "device": device.device_kind,
              "frozen_gib": frozen_gib, "lora_gib": lora_gib, "opt_state_gib": state_gib,
              "lora_params_m": sum(x.size for x in jax.tree.leaves(factors)) / 1e6}
    state = {"factors": factors, "opt_state": opt_state, "step": 0}

    def step():
        # the step donates the factors and optimiser state on GPUs: each call takes the previous call's outputs
        state["factors"], state["opt_state"], metrics = train_step(
            graphdef, spec, state["factors"], state["opt_state"], frozen, batch, jax.random.fold_in(key, state["step"]))
        state["step"] += 1
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(f"training step {state['step']} gave loss {loss}")
        state["loss"] = loss

    # The training step first: its figures (and its peak, which the forward's cannot raise) survive a case timeout
    # that cuts the forward short.
    result["train"] = _timed(f"{args.case} train step", step, args.iters, clock)
    result["train"]["peak_gib"] = _peak_gib(device)
    result["train"]["loss"] = state["loss"]
    peak = result["train"]["peak_gib"]
    _log(f"{args.case}: peak device memory " + ("not reported by this device" if peak is None else f"{peak:.1f} GiB"))
    run_forward = lambda: forward(state["factors"], frozen, micro, key).block_until_ready()  # noqa: E731
    result["forward"] = _timed(f"{args.case} forward", run_forward, args.iters, clock)
    result["ratio"] = result["train"]["seconds"] / result["forward"]["seconds"]
    _log(f"{args.case}: train / forward = {result['ratio']:.2f}")
    return result


def _spawn(case: str, args, gpu: int | None) -> dict | None:
    cmd = [sys.executable, __file__, "--child", "--case", case, "--depth", str(args.depth), "--iters", str(args.iters),
           "--quantize", args.quantize, "--remat", args.remat, "--bsa-backward", args.bsa_backward]
    cmd += ["--small"] * args.small
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    label = f"{case} quantize={args.quantize} remat={args.remat} bsa_backward={args.bsa_backward}" + (
        f" (GPU {gpu})" if gpu is not None else "")
    return run_child(cmd, label, args.case_timeout, env=env)


def _run_concurrently(cases: list[str], args) -> list[dict | None]:
    """Each case in its own process on its own GPU (case i on GPU i), all at once."""
    results: list[dict | None] = [None] * len(cases)

    def run(index: int) -> None:
        results[index] = _spawn(cases[index], args, index)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _print_table(rows: list[dict], args) -> None:
    nan = float("nan")
    depth = min(args.depth, 2) if args.small else args.depth
    print(f"\ndepth {depth}{' (--small: 256 wide, 4x8x8 grid)' if args.small else ''}, batch 1, LoRA rank {LORA_RANK} "
          f"on attention + FFN, remat {args.remat}, BSA backward {args.bsa_backward}, AdamW; median of {args.iters} "
          "after the compiling call; compile: tracing + lowering + XLA; peak: the device's peak by the end of the "
          "training steps")
    print(f"{'case':<15} {'tokens':>7} {'quantize':<8} {'train s':>8} {'fwd s':>7} {'train/fwd':>9} "
          f"{'train compile s':>15} {'fwd compile s':>13} {'train 1st s':>11} {'peak GiB':>8} "
          f"{'frozen GiB':>10} {'LoRA+Adam GiB':>13} {'loss':>7}")
    for row in rows:
        train, forward = row["train"], row["forward"]
        peak = "-" if train["peak_gib"] is None else f"{train['peak_gib']:.1f}"
        print(f"{row['case']:<15} {row['tokens']:>7} {row['quantize']:<8} {train['seconds']:>8.3f} "
              f"{forward['seconds']:>7.3f} {row['ratio']:>9.2f} {train['compile_s']:>15.1f} "
              f"{forward['compile_s']:>13.1f} {train['first_s']:>11.1f} {peak:>8} {row['frozen_gib']:>10.2f} "
              f"{row['lora_gib'] + row['opt_state_gib']:>13.2f} {train.get('loss', nan):>7.4f}")
    if rows:
        print(f"device: {rows[0]['device']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument("--depth", type=int, default=48, help="number of DiT blocks (48 = the real model)")
    parser.add_argument("--iters", type=int, default=2, help="timed calls of each step after the compiling one")
    parser.add_argument("--quantize", default="none", choices=["none", "fp8", "int8"],
                        help="the frozen base's block Linears: bf16 (none), FP8 (FP8 GEMMs) or INT8 (weight-only)")
    parser.add_argument("--remat", default="block", choices=list(REMAT_MODES),
                        help="what the backward recomputes (longcat_jax.training.remat): every block but its self "
                             "attention (block_keep_attention), every whole block (block), every block and in its "
                             "backward its self attention and FFN once more (block_and_sublayers), nothing (none)")
    parser.add_argument("--bsa-backward", default="auto", choices=list(BSA_BACKWARDS),
                        help="the BSA case's backward kernels (kernels.KernelConfig.backward): auto (Mosaic GPU on "
                             "Hopper, else Triton), Triton (any CUDA GPU) or Mosaic GPU (Hopper)")
    parser.add_argument("--case-timeout", type=float, default=None, help="seconds before a case's process is killed")
    parser.add_argument("--concurrent", action="store_true",
                        help="run the cases at the same time, case i on GPU i (needs a GPU per case)")
    parser.add_argument("--small", action="store_true", help="a 256-wide, 2-block DiT on a 4x8x8 grid (any machine)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_case(args)), flush=True)
        return
    cases = args.cases.split(",")
    unknown = [case for case in cases if case not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    if args.iters < 1:
        parser.error("--iters must be at least 1")
    results = _run_concurrently(cases, args) if args.concurrent else [_spawn(case, args, None) for case in cases]
    rows = [result for result in results if result]
    for result in rows:
        print(json.dumps(result), flush=True)
    _print_table(rows, args)
    if len(rows) < len(cases):
        sys.exit(1)


if __name__ == "__main__":
    main()
