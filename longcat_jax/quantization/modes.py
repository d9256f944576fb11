"""The quantization modes a user picks (`--quantize`), each a weight format and a way to compute with it.

    none             the model's own dtype (bf16): no quantization
    fp8              FP8 e4m3 weights, per-output-channel scales; activations quantized to e4m3 on the fly
                     (one scale per token) and multiplied as real FP8 GEMMs. Needs FP8 tensor cores:
                     compute capability 8.9 or newer (Ada, Hopper, Blackwell)
    fp8-attention    fp8, and the self attention in FP8 too: dense through cuDNN's FP8 flash attention, block-sparse
                     (BSA) through `kernels.KernelConfig(fp8=True)` (compute capability 9.0: Hopper); opt-in:
                     each dense attention call moves about 3.6e-2 from float32, and the real-size 480p step's
                     output (random weights) 2.3e-1 from bf16 against fp8's 6.8e-2, for 1.47x the bf16 step
                     against fp8's 1.19x (BENCHMARKS.md). Cross attention stays bf16. Inference only
    fp8-weight-only  the same FP8 weights, dequantized inside each matmul (bf16 math): for an FP8 checkpoint
                     on a GPU without FP8 tensor cores
    int8             INT8 weights, per-output-channel scales, dequantized inside each matmul: any GPU

Weight-only modes never keep a bf16 copy of a weight in device memory: the conversion is part of the jitted
matmul (XLA fuses it into the GEMM's operand read), and the per-channel scale is applied to the GEMM's output.
"""

from __future__ import annotations

import dataclasses

from longcat_jax.errors import ConfigError
from longcat_jax.quantization.formats import FP8_E4M3, INT8, WeightFormat

NONE = "none"
FP8 = "fp8"
FP8_ATTENTION = "fp8-attention"
FP8_WEIGHT_ONLY = "fp8-weight-only"
INT8_MODE = "int8"

FP8_COMPUTE = "fp8"
WEIGHT_ONLY = "weight_only"

PER_TOKEN = "per_token"
PER_TENSOR = "per_tensor"
ACTIVATION_SCALINGS = (PER_TOKEN, PER_TENSOR)
GEMM_DTYPES = ("float32", "bfloat16")
BF16_ATTENTION = "bf16"
FP8_ATTENTION_PRECISION = "fp8"
ATTENTION_PRECISIONS = (BF16_ATTENTION, FP8_ATTENTION_PRECISION)


@dataclasses.dataclass(frozen=True)
class QuantScheme:
    """What a quantized Linear stores and how it multiplies.

    compute: FP8_COMPUTE (activations quantized to e4m3, FP8 GEMM) or WEIGHT_ONLY (weights converted to the
    activation dtype inside the matmul). activation_scaling (FP8 compute only): one scale per token (row of
    the activations) or one per tensor. Per token is the default: the same error as per tensor on the fixture
    DiT (8.55e-4 vs 8.56e-4) and on Gaussian GEMMs (3.73e-2 vs 3.74e-2), lower where token magnitudes spread
    (3.42e-2 vs 3.74e-2; a token 1e-6 below the largest flushes to zero under one scale per tensor), and no
    reduction over the whole tensor before the GEMM can start. gemm_dtype (FP8 compute only): the dtype the FP8
    GEMM writes before its scales are applied, 'bfloat16' (the default: half the bytes written and read again by the
    scaling; the 480p FP8 step 5.89 -> 5.78 s on an H200, and its one more rounding moved a 4096-wide Gaussian
    GEMM's error 3.743e-2 -> 3.747e-2 and the fixture DiT's bf16 output error 2.45e-3 -> 2.47e-3, BENCHMARKS.md) or
    'float32'. attention: the self attention's precision, 'bf16' or 'fp8' (FP8 compute
    only; dense: `longcat_jax.quantization.attention`, block-sparse: `kernels.KernelConfig(fp8=True)`).
    """

    mode: str
    weight: WeightFormat
    compute: str
    activation_scaling: str = PER_TOKEN
    gemm_dtype: str = "bfloat16"
    attention: str = BF16_ATTENTION

    def __post_init__(self):
        if self.compute not in (FP8_COMPUTE, WEIGHT_ONLY):
            raise ConfigError(f"unknown quantized compute {self.compute!r}; use {FP8_COMPUTE!r} or {WEIGHT_ONLY!r}")
        if self.activation_scaling not in ACTIVATION_SCALINGS:
            raise ConfigError(
                f"unknown activation scaling {self.activation_scaling!r}; use one of {ACTIVATION_SCALINGS}"
            )
        if self.gemm_dtype not in GEMM_DTYPES:
            raise ConfigError(f"unknown FP8 GEMM output dtype {self.gemm_dtype!r}; use one of {GEMM_DTYPES}")
        if self.attention not in ATTENTION_PRECISIONS:
            raise ConfigError(f"unknown attention precision {self.attention!r}; use one of {ATTENTION_PRECISIONS}")
        if self.attention == FP8_ATTENTION_PRECISION and self.compute != FP8_COMPUTE:
            raise ConfigError("FP8 attention comes with FP8 compute: use the mode 'fp8-attention'")
        if self.compute == FP8_COMPUTE and self.weight != FP8_E4M3:
            raise ConfigError(f"FP8 compute needs FP8 e4m3 weights, not {self.weight.name}")


SCHEMES: dict[str, QuantScheme] = {
    FP8: QuantScheme(FP8, FP8_E4M3, FP8_COMPUTE),
    FP8_ATTENTION: QuantScheme(FP8_ATTENTION, FP8_E4M3, FP8_COMPUTE, attention=FP8_ATTENTION_PRECISION),
    FP8_WEIGHT_ONLY: QuantScheme(FP8_WEIGHT_ONLY, FP8_E4M3, WEIGHT_ONLY),
    INT8_MODE: QuantScheme(INT8_MODE, INT8, WEIGHT_ONLY),
}
MODES = (NONE, *SCHEMES)


def scheme_for(mode: str | QuantScheme | None) -> QuantScheme | None:
    """The scheme of a mode name (None or 'none': no quantization); a QuantScheme passes through."""
    if isinstance(mode, QuantScheme):
        return mode
    if mode is None or mode == NONE:
        return None
    if mode not in SCHEMES:
        raise ConfigError(f"unknown quantization mode {mode!r}; choose one of {list(MODES)}")
    return SCHEMES[mode]


def uses_fp8_attention(mode: str | QuantScheme | None) -> bool:
    """Whether `mode` runs the self attention (dense and block-sparse) in FP8 ('fp8-attention')."""
    scheme = scheme_for(mode)
    return scheme is not None and scheme.attention == FP8_ATTENTION_PRECISION


def modes_storing(fmt: WeightFormat) -> list[str]:
    """The modes whose weights are stored in `fmt` (an FP8 checkpoint serves 'fp8' and 'fp8-weight-only')."""
    return [name for name, scheme in SCHEMES.items() if scheme.weight == fmt]



def check_stored_quantization(source, stored: str | None, mode: str | QuantScheme | None) -> None:
    """Refuses loading a checkpoint whose weights are stored quantized (`stored`: a WeightFormat name, None if
    not) with a mode that does not read that format, before any tensor is read; names the modes that do."""
    if stored is None:
        return
    scheme = scheme_for(mode)
    fmt = next(f for f in (FP8_E4M3, INT8) if f.name == stored)
    if scheme is None or scheme.weight != fmt:
        asked = "no quantization" if scheme is None else f"--quantize {scheme.mode}"
        raise ConfigError(
            f"{source} holds {fmt.name} weights (converted with --quantize), but {asked} was asked for; "
            f"load it with --quantize {' or '.join(modes_storing(fmt))}, or convert the original checkpoint again "
            "for another mode"
        )
