"""FP8 compute only where FP8 tensor cores exist; the refusal names the fix."""

import dataclasses

import jax
import pytest

from longcat_jax.errors import ConfigError
from longcat_jax.quantization import check_quantize_supported, fp8_compute_supported
from longcat_jax.quantization.device import compute_capability


@dataclasses.dataclass
class FakeDevice:
    platform: str
    device_kind: str
    compute_capability: str | None = None


A100 = FakeDevice("gpu", "NVIDIA A100-SXM4-80GB", "8.0")
L40S = FakeDevice("gpu", "NVIDIA L40S", "8.9")
H100 = FakeDevice("gpu", "NVIDIA H100 80GB HBM3", "9.0")
B200 = FakeDevice("gpu", "NVIDIA B200", "10.0")
TPU = FakeDevice("tpu", "TPU v4")


def test_fp8_needs_compute_capability_8_9():
    assert [fp8_compute_supported(d) for d in (A100, L40S, H100, B200, TPU)] == [False, True, True, True, False]
    assert compute_capability(B200) == (10, 0) and compute_capability(TPU) is None
    assert fp8_compute_supported(jax.devices("cpu")[0])  # emulated by XLA: what the CPU tests run


def test_fp8_on_an_a100_is_refused_naming_int8():
    with pytest.raises(ConfigError, match=r"--quantize fp8 runs FP8 matrix multiplies.*compute capability 8\.9.*"
                                          r"NVIDIA A100-SXM4-80GB has compute capability 8\.0\. Use --quantize int8"):
        check_quantize_supported("fp8", [A100])
    with pytest.raises(ConfigError, match="platform tpu"):
        check_quantize_supported("fp8", [H100, TPU])


@pytest.mark.parametrize("mode", ["none", None, "int8", "fp8-weight-only"])
def test_weight_only_and_none_run_anywhere(mode):
    check_quantize_supported(mode, [A100, TPU])


def test_fp8_where_supported_and_unknown_modes():
    check_quantize_supported("fp8", [L40S, H100, B200])
    if all(fp8_compute_supported(d) for d in jax.local_devices()):  # this machine's devices: the default
        check_quantize_supported("fp8")
    else:
        with pytest.raises(ConfigError, match="Use --quantize int8"):
            check_quantize_supported("fp8")
    with pytest.raises(ConfigError, match="unknown quantization mode 'nf4'"):
        check_quantize_supported("nf4", [H100])
