"""The quantization measurements behind the policy and the tests' tolerances (CPU, a few minutes):

    LONGCAT_FIXTURES=../shared/fixtures/longcat_ref python -m tests.quantization.quality_report

1. One GEMM: relative L2 of each quantized matmul against the exact product of the same bf16 operands.
2. The fixture DiT: every fixture case, each mode, float32 and bfloat16 activations, against our unquantized
   DiT of the same activation dtype (and against float32).
3. Per-block local error (`block_errors`) of the fixture DiT and of a random DiT of the same config.
4. Sensitivity: one layer group quantized at a time, DiT output error and mean block-update error, next to
   the group's share of the real 13.6B model's weights.
5. LoRA on a quantized base: run time (bf16 factors) vs merged before quantizing vs merged after.
6. Four-step sampling loops (the parity group `sample`) with a quantized DiT against the unquantized one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.loading import random_dit
from longcat_jax.models.dit.lora import load_lora, merge_loras
from longcat_jax.models.dit.params import expected_parameters
from longcat_jax.models.dit.quantized_linear import quantize_linears
from longcat_jax.quantization import FP8_E4M3, SCHEMES, QuantScheme, quantize_kernel
from longcat_jax.quantization.block_errors import block_errors
from longcat_jax.quantization.formats import to_format
from longcat_jax.quantization.matmul import fp8_dot, weight_only_dot
from longcat_jax.quantization.modes import FP8_COMPUTE, PER_TENSOR
from longcat_jax.quantization.policy import is_quantized_module
from tests.quantization.fixture_dit import CASES, attach_lora, load_quantized_dit, read_cases, run_case, t2v_args

FP8_PER_TENSOR = QuantScheme("fp8", FP8_E4M3, FP8_COMPUTE, PER_TENSOR)
MODES = {"fp8": SCHEMES["fp8"], "fp8 per-tensor act": FP8_PER_TENSOR, "fp8-weight-only": SCHEMES["fp8-weight-only"],
         "int8": SCHEMES["int8"]}

# Layer groups for the sensitivity table: name -> module-path predicate.
GROUPS = {
    **{f"blocks.*.{'.'.join(inner)}": (lambda inner: lambda p: len(p) == 4 and p[0] == "blocks" and p[2:] == inner)(inner)
       for inner in (("attn", "qkv"), ("attn", "proj"), ("cross_attn", "q"), ("cross_attn", "kv"),
                     ("cross_attn", "proj"), ("ffn", "w1"), ("ffn", "w2"), ("ffn", "w3"))},
    "policy (all 8 above)": is_quantized_module,
    "blocks.*.adaln": lambda p: len(p) == 3 and p[0] == "blocks" and p[2] == "adaln",
    "timestep_embed": lambda p: p[:1] == ("timestep_embed",),
    "caption_embed": lambda p: p[:1] == ("caption_embed",),
    "final_layer.adaln": lambda p: p == ("final_layer", "adaln"),
    "final_layer.linear": lambda p: p == ("final_layer", "linear"),
}


def _section(title: str) -> None:
    print(f"\n## {title}\n", flush=True)


def gemm_errors(m: int = 2048, k: int = 1024, n: int = 1024, seed: int = 0) -> dict[str, dict[str, float]]:
    """Relative L2 of each quantized GEMM on Gaussian data and on data with outliers (per-token magnitudes
    spread lognormally, 1% of input channels 20x larger, output channels of spread scale)."""
    rng = np.random.default_rng(seed)
    data = {}
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    data["gaussian"] = (x, w)
    token_scale = np.exp(rng.standard_normal((m, 1))).astype(np.float32)
    channel_boost = np.where(rng.random(k) < 0.01, 20.0, 1.0).astype(np.float32)
    w_spread = w * np.exp(0.5 * rng.standard_normal((1, n))).astype(np.float32)
    data["outliers"] = (x * token_scale * channel_boost, w_spread)
    results: dict[str, dict[str, float]] = {}
    for kind, (x, w) in data.items():
        xb = jnp.asarray(x, jnp.bfloat16)
        wb = jnp.asarray(w, jnp.bfloat16)
        exact = np.asarray(xb, np.float64) @ np.asarray(wb, np.float64)
        q8, s8 = quantize_kernel(wb, FP8_E4M3)
        qi, si = quantize_kernel(wb, SCHEMES["int8"].weight)
        # Per-tensor weight scale (the probe's setting): one scale for the whole kernel.
        s_tensor = jnp.max(jnp.abs(wb.astype(jnp.float32))) / FP8_E4M3.max_value
        q_tensor = to_format(wb.astype(jnp.float32).T / s_tensor, FP8_E4M3)
        s_tensor = jnp.full((n,), s_tensor, jnp.float32)
        rows = {
            "fp8 weights per-tensor, acts per-tensor": fp8_dot(xb, q_tensor, s_tensor, scaling="per_tensor"),
            "fp8 weights per-channel, acts per-tensor": fp8_dot(xb, q8, s8, scaling="per_tensor"),
            "fp8 weights per-channel, acts per-token": fp8_dot(xb, q8, s8, scaling="per_token"),
            "fp8 per-channel/per-token, bf16 GEMM output": fp8_dot(xb, q8, s8, scaling="per_token",
                                                                    gemm_dtype=jnp.bfloat16),
            "fp8 weight-only (per-channel)": weight_only_dot(xb, q8, s8),
            "int8 weight-only (per-channel)": weight_only_dot(xb, qi, si),
            "bf16 output rounding alone": (xb.astype(jnp.float32) @ wb.astype(jnp.float32)).astype(jnp.bfloat16),
        }
        for name, got in rows.items():
            results.setdefault(name, {})[kind] = rel_l2(np.asarray(got, np.float32), exact)
    return results


def dit_case_errors(fixtures: Path) -> dict[tuple[str, str], dict[str, float]]:
    """{(activation dtype, mode): {case: rel L2 vs our unquantized DiT of that dtype}} (+ 'vs f32' for bf16)."""
    cases = read_cases(fixtures)
    lora = load_lora(Path(fixtures) / "lora_rank8.safetensors")
    results = {}
    references = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        for mode in ("none", *MODES):
            scheme = None if mode == "none" else MODES[mode]
            model = load_quantized_dit(fixtures, scheme, dtype)
            names = CASES if mode != "fp8 per-tensor act" else ("t2v",)
            outputs = {}
            for name in names:
                if name == "lora":
                    attach_lora(model, lora)
                outputs[name] = run_case(model, cases, name)
                if name == "lora":
                    model = load_quantized_dit(fixtures, scheme, dtype)
            if mode == "none":
                references[dtype] = outputs
                if dtype == jnp.bfloat16:
                    results[("bfloat16", "none vs float32")] = {c: rel_l2(outputs[c], references[jnp.float32][c])
                                                                for c in names}
                continue
            key = (jnp.dtype(dtype).name, mode)
            results[key] = {c: rel_l2(outputs[c], references[dtype][c]) for c in names}
            if dtype == jnp.bfloat16:
                results[(key[0], mode + " vs float32")] = {c: rel_l2(outputs[c], references[jnp.float32][c])
                                                           for c in names}
            print(f"  {key}: {results[key]}", flush=True)
    return results


def _random_twin(config: DiTConfig, dtype):
    return random_dit(config, seed=0, dtype=dtype)


def per_block(fixtures: Path) -> dict[str, list]:
    cases = read_cases(fixtures)
    args = t2v_args(cases)
    config = DiTConfig.from_json(Path(fixtures) / "dit" / "config.json")
    out = {}
    for mode in ("fp8", "int8"):
        out[f"fixture {mode}"] = block_errors(load_quantized_dit(fixtures, None), load_quantized_dit(fixtures, mode), *args)[1]
        reference = _random_twin(config, jnp.float32)
        out[f"random {mode}"] = block_errors(reference, quantize_linears(_random_twin(config, jnp.float32), mode), *args)[1]
    return out


def real_size_shares() -> dict[str, float]:
    """Each group's share of the real model's weights (DiTConfig() defaults: the released 13.6B DiT)."""
    shapes = expected_parameters(DiTConfig())
    total = sum(int(np.prod(s)) for s in shapes.values())
    shares = {}
    for name, select in GROUPS.items():
        count = sum(int(np.prod(s)) for p, s in shapes.items() if p[-1] == "kernel" and select(tuple(p[:-1])))
        shares[name] = count / total
    return shares


def sensitivity(fixtures: Path) -> dict[tuple[str, str], tuple[float, float, float, float]]:
    """{(group, mode): (fixture output rel, fixture mean update rel, random output rel, random mean update rel)}."""
    cases = read_cases(fixtures)
    args = t2v_args(cases)
    config = DiTConfig.from_json(Path(fixtures) / "dit" / "config.json")
    references = {"fixture": load_quantized_dit(fixtures, None), "random": _random_twin(config, jnp.float32)}
    outputs = {name: run_case(model, cases, "t2v") for name, model in references.items()}
    results = {}
    for group, select in GROUPS.items():
        for mode in ("fp8", "int8"):
            row = []
            for name, reference in references.items():
                fresh = load_quantized_dit(fixtures, None) if name == "fixture" else _random_twin(config, jnp.float32)
                candidate = quantize_linears(fresh, mode, select=select)
                row.append(rel_l2(run_case(candidate, cases, "t2v"), outputs[name]))
                row.append(float(np.mean([b.update_rel for b in block_errors(reference, candidate, *args)])))
            results[(group, mode)] = tuple(row)
            print(f"  {group:<28} {mode:<5} {row}", flush=True)
    return results


def lora_on_quantized(fixtures: Path) -> dict[tuple[str, str], float]:
    """LoRA output error vs the unquantized DiT with the same LoRA at run time, three ways, and the timing of the
    jitted run-time forward (CPU, after compilation) with and without the LoRA."""
    cases = read_cases(fixtures)
    lora = load_lora(Path(fixtures) / "lora_rank8.safetensors")
    reference = load_quantized_dit(fixtures, None)
    attach_lora(reference, lora)
    want = run_case(reference, cases, "lora")
    results = {}
    for mode in ("fp8", "int8"):
        run_time = load_quantized_dit(fixtures, mode)
        attach_lora(run_time, lora)
        results[(mode, "run time, bf16-style factors on the quantized base")] = rel_l2(run_case(run_time, cases, "lora"), want)
        merged_first = load_quantized_dit(fixtures, None)
        merge_loras(merged_first, [lora])
        results[(mode, "merged into float weights, then quantized")] = rel_l2(
            run_case(quantize_linears(merged_first, mode), cases, "lora"), want)
        merged_after = load_quantized_dit(fixtures, mode)
        for module_path, factors in lora.modules.items():
            linear = merged_after
            for part in module_path:
                linear = linear[part] if isinstance(part, int) else getattr(linear, part)
            linear.add_to_kernel(jnp.asarray(factors.down @ factors.up * factors.alpha_scale * lora.multiplier))
        results[(mode, "merged into the quantized weights (re-quantized)")] = rel_l2(run_case(merged_after, cases, "lora"), want)
    return results


def sampling(fixtures: Path) -> dict[tuple[str, str], float]:
    """4-step sampling loops of the parity group `sample` with a quantized DiT vs the unquantized DiT."""
    import json

    from safetensors.numpy import load_file

    from longcat_jax.parity.sample import sample_case
    from longcat_jax.pipelines.denoise import Denoiser
    from longcat_jax.pipelines.scheduler import SchedulerConfig

    spec = json.loads((Path(fixtures) / "pipeline_cases.json").read_text())
    tensors = load_file(str(Path(fixtures) / "pipeline_cases.safetensors"))
    scheduler = SchedulerConfig.from_dict(spec.get("scheduler", {}).get("config", {}), source="pipeline_cases.json")
    loops = {"t2v_cfg4_4steps": ("t2v", 4.0), "i2v_4steps": ("i2v", 1.0)}
    results = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        reference = Denoiser(load_quantized_dit(fixtures, None, dtype))
        want = {name: sample_case(reference, tensors, task, 4, g, scheduler=scheduler) for name, (task, g) in loops.items()}
        for mode in ("fp8", "int8"):
            denoiser = Denoiser(load_quantized_dit(fixtures, mode, dtype))
            for name, (task, g) in loops.items():
                got = sample_case(denoiser, tensors, task, 4, g, scheduler=scheduler)
                results[(f"{jnp.dtype(dtype).name} {mode}", name)] = rel_l2(got, want[name])
    return results


def main() -> None:
    jax.config.update("jax_default_matmul_precision", "highest")
    fixtures = Path(os.environ.get("LONGCAT_FIXTURES", "../shared/fixtures/longcat_ref"))
    start = time.perf_counter()
    print(f"# Quantization measurements ({jax.devices()[0].device_kind}, jax {jax.__version__})")

    _section("1. One GEMM, relative L2 vs the exact product of the bf16 operands (2048x1024x1024)")
    for name, by_kind in gemm_errors().items():
        print(f"| {name:<46} | " + " | ".join(f"{kind} {v:.2e}" for kind, v in by_kind.items()) + " |")

    _section("2. Fixture DiT output, relative L2 vs our unquantized DiT of the same activation dtype")
    for (dtype, mode), by_case in dit_case_errors(fixtures).items():
        print(f"| {dtype:<8} | {mode:<28} | " + " | ".join(f"{c} {v:.2e}" for c, v in by_case.items()) + " |")

    _section("3. Per-block local error (t2v inputs): ||c-r||/||r|| and ||c-r||/||update||")
    for name, blocks in per_block(fixtures).items():
        print(f"| {name:<12} | " + " | ".join(f"block {b.index}: {b.output_rel:.2e} / {b.update_rel:.2e}" for b in blocks) + " |")

    _section("4. Sensitivity: one group quantized (t2v output rel L2, mean block-update rel; fixture | random DiT)")
    shares = real_size_shares()
    for (group, mode), (fo, fu, ro, ru) in sensitivity(fixtures).items():
        print(f"| {group:<28} | {mode:<5} | {shares[group]:7.2%} | fixture {fo:.2e} / {fu:.2e} | random {ro:.2e} / {ru:.2e} |")

    _section("5. LoRA on a quantized base (fixture lora case vs the unquantized DiT with the LoRA at run time)")
    for (mode, how), value in lora_on_quantized(fixtures).items():
        print(f"| {mode:<5} | {how:<52} | {value:.2e} |")

    _section("6. Four-step sampling loops vs the unquantized DiT of the same activation dtype")
    for (mode, loop), value in sampling(fixtures).items():
        print(f"| {mode:<15} | {loop:<16} | {value:.2e} |")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
