"""The fast loading paths give what the plain ones gave: chunked host quantization and device quantization bit for
bit the reference numpy recipe, placement of transposed views as their contiguous copies, a whole `load_dit` (plain,
quantized, pinned host) leaf for leaf, and the prefetching reader in order and with its errors."""

from __future__ import annotations

import threading
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from jax.sharding import SingleDeviceSharding

from longcat_jax.checkpoint import param_tree
from longcat_jax.checkpoint.param_tree import place
from longcat_jax.checkpoint.prefetch import prefetched
from longcat_jax.errors import CheckpointError
from longcat_jax.memory.device import PINNED_HOST
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.loading import load_dit
from longcat_jax.models.dit.params import original_tensors
from longcat_jax.quantization import formats, quantize_tensors
from longcat_jax.quantization.formats import (
    FP8_E4M3,
    INT8,
    MIN_CHANNEL_ABSMAX,
    quantize_kernel,
    quantize_kernel_on_device,
    quantize_rows_on_device,
    to_format,
)
from longcat_jax.quantization.policy import QKERNEL, QSCALE
from tests.helpers.dit_checkpoints import dit_config, write_original_dit

FORMATS = [FP8_E4M3, INT8]


def _reference_quantize(kernel: np.ndarray, fmt) -> tuple[np.ndarray, np.ndarray]:
    """The recipe before the chunked path: one float32 copy of the whole kernel, transposed, divided at once."""
    rows = np.asarray(kernel, dtype=np.float32).T
    absmax = np.max(np.abs(rows), axis=1)
    qscale = (np.maximum(absmax, np.float32(MIN_CHANNEL_ABSMAX)) / np.float32(fmt.max_value)).astype(np.float32)
    return np.ascontiguousarray(to_format(rows / qscale[:, None], fmt)), qscale


def _torch_weight(seed: int, shape=(200, 72), dtype=ml_dtypes.bfloat16) -> np.ndarray:
    """[out, in] with channels of very different ranges and one all-zero channel."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal(shape, dtype=np.float32) * np.exp(2 * rng.standard_normal((shape[0], 1))).astype(np.float32)
    weight[3] = 0
    return weight.astype(dtype)


def _assert_same_bits(got, want):
    qkernel, qscale = (np.asarray(a) for a in got)
    assert qkernel.dtype == want[0].dtype and qkernel.shape == want[0].shape
    np.testing.assert_array_equal(qkernel.view(np.uint8), want[0].view(np.uint8))
    np.testing.assert_array_equal(qscale.view(np.uint32), want[1].view(np.uint32))


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float32], ids=["bf16", "f32"])
def test_chunked_host_quantization_is_bit_identical(monkeypatch, fmt, dtype):
    monkeypatch.setattr(formats, "HOST_CHUNK_ELEMENTS", 72 * 7)  # 7 rows a chunk: 29 chunks, the last one short
    monkeypatch.setattr(formats, "HOST_THREADS", 3)
    weight = _torch_weight(0, dtype=dtype)
    want = _reference_quantize(np.ascontiguousarray(weight.T), fmt)
    for kernel in (weight.T, np.ascontiguousarray(weight.T)):  # a transposed view, as the loaders give, and contiguous
        qkernel, qscale = quantize_kernel(kernel, fmt)
        assert qkernel.flags.c_contiguous
        _assert_same_bits((qkernel, qscale), want)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_device_quantization_is_bit_identical_to_the_host(fmt):
    """On the default device (the CPU here, a GPU on the GPU machine): true divisions, numpy's bits."""
    weight = _torch_weight(1, shape=(256, 160))
    want = _reference_quantize(weight.T, fmt)
    _assert_same_bits(quantize_rows_on_device(jnp.asarray(weight), fmt), want)
    _assert_same_bits(quantize_kernel_on_device(jnp.asarray(np.ascontiguousarray(weight.T)), fmt), want)


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_quantize_tensors_on_a_device_yields_the_host_bits(mode):
    weight = _torch_weight(2)
    stream = [(("blocks", 0, "attn", "qkv", "kernel"), weight.T), (("blocks", 0, "attn", "qkv", "bias"), weight[:, 0]),
              (("blocks", 0, "ffn", "w1", "kernel"), np.ascontiguousarray(weight.T))]
    host = list(quantize_tensors(iter(stream), mode))
    device = list(quantize_tensors(iter(stream), mode, device=jax.devices()[0]))
    assert [p for p, _ in device] == [p for p, _ in host]
    assert [p[-1] for p, _ in host] == [QKERNEL, QSCALE, "bias", QKERNEL, QSCALE]
    for (path, got), (_, want) in zip(device, host, strict=True):
        assert isinstance(got, jax.Array) == (path[-1] in (QKERNEL, QSCALE))
        np.testing.assert_array_equal(np.ascontiguousarray(got).view(np.uint8), np.ascontiguousarray(want).view(np.uint8))


@pytest.mark.parametrize("accelerator_branch", [False, True], ids=["runtime-strides", "device-transpose"])
def test_place_lays_out_views_as_their_contiguous_copies(monkeypatch, accelerator_branch):
    """A transposed view is placed equal to its contiguous copy, both by the runtime's strided copy (the CPU) and by
    the copy-then-transpose-on-device branch an accelerator takes (forced onto the CPU device here)."""
    device = jax.devices()[0]
    if accelerator_branch:
        monkeypatch.setattr(param_tree, "single_accelerator", lambda _: device)
    conv = np.random.default_rng(3).standard_normal((8, 3, 1, 2, 2), dtype=np.float32).astype(ml_dtypes.bfloat16)
    for view in (_torch_weight(4).T, conv.transpose(2, 3, 4, 1, 0), conv[:, :2]):  # the last: not a permutation
        for target in (None, device, SingleDeviceSharding(device, memory_kind=PINNED_HOST)):
            placed = place(view, view.dtype, target)
            np.testing.assert_array_equal(np.asarray(placed).view(np.uint16), np.ascontiguousarray(view).view(np.uint16))
        assert place(view, np.float32, None).dtype == np.float32
    on_device = jnp.ones((4, 3), jnp.bfloat16)
    assert place(on_device, np.float32, None).dtype == np.float32


def _loaded_leaves(model) -> dict[tuple, np.ndarray]:
    return {tuple(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


@pytest.fixture(scope="module")
def small_dit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dit")
    raw = dit_config(hidden_size=64, depth=2, num_heads=4)
    tensors = write_original_dit(folder, raw)
    config = DiTConfig.from_json(folder / "config.json")
    expected = {t.path: np.ascontiguousarray(tensors[name] if t.axes is None else tensors[name].transpose(t.axes))
                for name, t in original_tensors(config).items()}
    return folder, expected


@pytest.mark.parametrize("placement", ["device", "pinned-host"])
def test_load_dit_gives_the_checkpoint_leaf_for_leaf(small_dit, placement):
    folder, expected = small_dit
    device = jax.devices()[0]
    target = None if placement == "device" else SingleDeviceSharding(device, memory_kind=PINNED_HOST)
    leaves = _loaded_leaves(load_dit(folder, device=target))
    assert leaves.keys() == expected.keys()
    for path, want in expected.items():
        np.testing.assert_array_equal(leaves[path].view(np.uint16), want.view(np.uint16), err_msg=str(path))


def test_quantized_load_dit_gives_the_reference_quantization(small_dit):
    folder, expected = small_dit
    leaves = _loaded_leaves(load_dit(folder, quantize="int8"))
    quantized = [p[:-1] for p in leaves if p[-1] == QKERNEL]
    assert quantized
    for module in quantized:
        want = _reference_quantize(expected[(*module, "kernel")], INT8)
        _assert_same_bits((leaves[(*module, QKERNEL)], leaves[(*module, QSCALE)]), want)
    for path, value in leaves.items():
        if path[-1] not in (QKERNEL, QSCALE):
            np.testing.assert_array_equal(value.view(np.uint16), expected[path].view(np.uint16), err_msg=str(path))


def test_prefetch_keeps_order_and_reads_ahead_boundedly():
    produced = []

    def slow_reader():
        for i in range(20):
            time.sleep(0.001 * (i % 3))
            produced.append(i)
            yield i

    got = []
    for item in prefetched(slow_reader(), depth=2):
        assert len(produced) <= item + 1 + 2 + 1  # the queue's 2, plus the one the reader holds
        got.append(item)
    assert got == list(range(20))


def test_prefetch_raises_the_readers_error_after_the_items_before_it():
    def failing_reader():
        yield "a"
        yield "b"
        raise CheckpointError("/ckpt/dit/diffusion_pytorch_model-00002-of-00006.safetensors ended while reading tensor x")

    got = []
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model-00002-of-00006\.safetensors"):
        for item in prefetched(failing_reader()):
            got.append(item)
    assert got == ["a", "b"]


def test_prefetch_stops_the_reader_when_the_consumer_stops():
    stopped = threading.Event()

    def endless_reader():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            stopped.set()

    stream = prefetched(endless_reader(), depth=3)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert stopped.wait(5)
