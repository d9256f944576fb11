"""`KernelConfig` and `MosaicConfig`: settings refused up front, and inputs the forced Mosaic forward cannot run."""

import jax.numpy as jnp
import pytest

from kernels import BSAConfigError, BSAInputError, KernelConfig, MosaicConfig, mosaic_config, sparse_attention_chunked
from tests.helpers.bsa_cases import BLOCK

MOSAIC = KernelConfig(forward="mosaic")


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_key_ranges_must_be_a_positive_int(bad):
    with pytest.raises(BSAConfigError, match="key_ranges must be None or an int >= 1"):
        KernelConfig(key_ranges=bad)


def test_the_conditional_rescale_is_on_for_the_bf16_kernel_only():
    # timed on an H100 (BENCHMARKS.md): the bf16 kernel 1.013-1.029x faster with it, the FP8 one 0.96-0.99x
    config = KernelConfig()
    assert config.mosaic.conditional_rescale and not config.mosaic.rescale_threshold
    assert not config.mosaic_fp8.conditional_rescale


def test_mosaic_forward_refuses_what_it_cannot_run():
    q = jnp.zeros((1, 256, 1, 64), jnp.bfloat16)
    indices, counts = jnp.zeros((1, 1, 2, 1), jnp.int32), jnp.ones((1, 1, 2), jnp.int32)
    with pytest.raises(BSAInputError, match="Mosaic GPU BSA forward needs 64-token"):
        sparse_attention_chunked(q, q, q, indices, counts, 128, 128, backend="pallas_interpret", kernel_config=MOSAIC)
    with pytest.raises(BSAInputError, match="bf16/f16"):
        q32 = q.astype(jnp.float32)
        sparse_attention_chunked(q32, q32, q32, jnp.zeros((1, 1, 4, 1), jnp.int32), jnp.ones((1, 1, 4), jnp.int32),
                                 BLOCK, BLOCK, backend="pallas_interpret", kernel_config=MOSAIC)
    with pytest.raises(BSAConfigError, match="unknown BSA forward kernel"):
        KernelConfig(forward="cutlass")
    with pytest.raises(BSAConfigError, match="k_stages must be at least 2"):
        MosaicConfig(k_stages=1)
    with pytest.raises(BSAConfigError, match="producers must be 1 or 2"):
        MosaicConfig(producers=3)
    with pytest.raises(BSAConfigError, match="rounds must be an int >= 1"):
        MosaicConfig(rounds=0)
    for phases in (-1, 1.5, True):
        with pytest.raises(BSAConfigError, match=r"phased_walks must be an int >= 0 \(0: off; else the CTAs that run"):
            MosaicConfig(phased_walks=phases)
    with pytest.raises(BSAConfigError, match="consumers must be 2 or 3, got 4"):
        MosaicConfig(consumers=4)
    for threshold in (-1.0, 4.5, "2", True):
        with pytest.raises(BSAConfigError, match=r"rescale_threshold must be in \[0, 4\] \(log2 units\), got"):
            MosaicConfig(conditional_rescale=True, rescale_threshold=threshold)
    with pytest.raises(BSAConfigError, match=r"rescale_threshold=2.0\) .* set it too, or leave rescale_threshold at 0"):
        MosaicConfig(rescale_threshold=2.0)
    with pytest.raises(BSAConfigError, match="consumers=3\\) needs schedule_barrier=False and producers=1"):
        MosaicConfig(consumers=3)
    with pytest.raises(BSAConfigError, match="consumers=3\\) needs schedule_barrier=False and producers=1"):
        MosaicConfig(consumers=3, schedule_barrier=False, producers=2)
    q = jnp.zeros((1, 256, 1, 128), jnp.bfloat16)
    with pytest.raises(BSAConfigError, match="lower MosaicConfig.k_stages"):
        sparse_attention_chunked(q, q, q, jnp.zeros((1, 1, 4, 1), jnp.int32), jnp.ones((1, 1, 4), jnp.int32),
                                 BLOCK, BLOCK, backend="pallas_interpret",
                                 kernel_config=KernelConfig(forward="mosaic", mosaic=MosaicConfig(k_stages=4, v_stages=3)))
    # three consumers fit head_dim 128 with FP8 operands, or head_dim 64; bf16 at 128 runs on two (and so fits)
    three = MosaicConfig(consumers=3, schedule_barrier=False)
    assert mosaic_config.fitted(three, 128, 168, fp8=True) is three and mosaic_config.fitted(three, 64, 168) is three
    assert mosaic_config.smem_bytes(128, 192, three) > mosaic_config.SMEM_BYTES
    assert mosaic_config.fitted(three, 128, 168).consumers == 2 and mosaic_config.fits(128, 168, three)
    # lists too long for three consumers' shared memory run on two (FP8's default is three), so "auto" keeps them on
    # the Mosaic kernel; lists too long for two still do not fit
    fp8_default = KernelConfig().mosaic_fp8
    assert fp8_default.consumers == 3 and mosaic_config.fitted(fp8_default, 128, 2640, fp8=True) is fp8_default
    assert mosaic_config.fitted(fp8_default, 128, 6000, fp8=True).consumers == 2
    assert mosaic_config.fits(128, 6000, fp8_default, fp8=True)
    assert not mosaic_config.fits(128, 20000, fp8_default, fp8=True)
    # CDF lists over a long video: more than the default stages leave room for; "auto" leaves them to Triton
    assert mosaic_config.fits(128, 2640, MosaicConfig()) and not mosaic_config.fits(128, 6000, MosaicConfig())
    long_lists = jnp.zeros((1, 1, 4, 6000), jnp.int32)
    with pytest.raises(BSAConfigError, match="or use KernelConfig\\(forward='triton'\\) for lists this long"):
        sparse_attention_chunked(q, q, q, long_lists, jnp.ones((1, 1, 4), jnp.int32), BLOCK, BLOCK,
                                 backend="pallas_interpret", kernel_config=MOSAIC)
