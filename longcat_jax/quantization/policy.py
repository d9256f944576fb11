"""Which DiT layers are quantized and which stay in the model dtype, and why: the one place that decides it.

Quantized: the eight large Linears of every block, 95.2% of the DiT's 13.6B weights and nearly all of its matmul
time; all but one multiply every video token (cross_attn.kv reads the text tokens only and is quantized for its
11.9% of the weights).

Everything else stays in high precision, for the reasons in HIGH_PRECISION: each group was quantized alone and
the DiT output compared with the unquantized model's, on the fixture DiT and on a random DiT of the same config
(`python -m tests.quantization.quality_report` prints the full tables).
"""

from __future__ import annotations

from longcat_jax.checkpoint.param_tree import ParamPath

QKERNEL = "qkernel"  # [out, in] quantized weight of a Linear (replaces its `kernel` [in, out])
QSCALE = "qscale"  # [out] float32 per-output-channel scale
KERNEL = "kernel"

# Module paths inside `blocks.<i>` whose Linear is quantized.
QUANTIZED_BLOCK_LINEARS: tuple[tuple[str, ...], ...] = (
    ("attn", "qkv"),
    ("attn", "proj"),
    ("cross_attn", "q"),
    ("cross_attn", "kv"),
    ("cross_attn", "proj"),
    ("ffn", "w1"),
    ("ffn", "w2"),
    ("ffn", "w3"),
)

# Layers kept in the model dtype (module path pattern, '*' = any block) -> why. "Alone" numbers: that group
# quantized to FP8 and nothing else, t2v output relative L2 against the unquantized DiT (float32); for scale,
# the eight quantized Linears together (95.2% of the weights) give 8.6e-4 on the fixture DiT and 2.5e-2 on a
# random DiT of the same config, whose blocks change the output more (`tests/quantization/quality_report.py`).
HIGH_PRECISION: dict[str, str] = {
    "blocks.*.adaln": (
        "4.45% of the weights (0.6 GB in bf16) and no measurable time (one row per latent frame, not per token), "
        "yet it scales, shifts and gates every token of its block: FP8 alone gives 6.4e-3 on the random DiT, a "
        "quarter of the error of the 95% that is quantized, about 6x the error per byte"
    ),
    "timestep_embed": (
        "<0.01% of the weights, float32 as in the original; it feeds every adaLN: FP8 alone gives 1.5e-3 on the "
        "fixture DiT, 1.8x the error of all quantized Linears together"
    ),
    "caption_embed": (
        "0.25% of the weights, runs on the text tokens only; FP8 alone gives 2.2e-2 on the random DiT, as much as "
        "all quantized Linears together, since every cross attention reads its output"
    ),
    "final_layer": (
        "0.03% of the weights, float32 as in the original; its Linear writes the velocity itself: FP8 alone gives "
        "3.7e-2 (43x all quantized Linears together on the fixture DiT), its adaLN 1.1e-3 (1.3x)"
    ),
    "patch_embed": "a 1x2x2 Conv3d, 0.002% of the weights and of the FLOPs: nothing to gain, not measured",
    "norms": "1-D scales applied elementwise (0.003% of the weights): no matmul to speed up, nothing to save",
    "LoRA factors": (
        "rank-r factors in the model dtype, applied at run time: 6.0e-3 (FP8 base) and 1.2e-3 (INT8) against the "
        "unquantized DiT with the same LoRA on the fixture, where merging before quantizing gives 2.7e-2 and "
        "5.4e-3; and LoRAs switch between stages without re-quantizing"
    ),
}


def is_quantized_module(module_path: ParamPath) -> bool:
    """True for the module path of a Linear that quantized models store quantized, e.g. ('blocks', 3, 'ffn', 'w2')."""
    path = tuple(module_path)
    return (len(path) == 4 and path[0] == "blocks" and isinstance(path[1], int)
            and path[2:] in QUANTIZED_BLOCK_LINEARS)


def is_quantized_kernel(path: ParamPath) -> bool:
    """True for the `kernel` parameter path of a Linear that a quantized model stores as qkernel + qscale."""
    path = tuple(path)
    return bool(path) and path[-1] == KERNEL and is_quantized_module(path[:-1])
