"""Quantizing, or checking, the (path, array) stream a DiT is loaded or converted from, one tensor at a time.

The loaders and the converter read a checkpoint as a stream of (parameter path, numpy array) pairs in
checkpoint order, one block's tensors together. `quantize_tensors` sits in that stream:

    tensors = quantize_tensors(dit_tensors(ckpt, config), "fp8", source=str(path))
    model = fill_model(lambda: LongCatDiT(config, ..., quantize="fp8"), tensors, source=str(path))

A float `kernel` [in, out] of a quantized Linear (see `policy`) leaves as `qkernel` [out, in] and `qscale`
[out], computed on the host (numpy, in row chunks over a few threads) or, with `device=`, on that device: each
float kernel is copied there, quantized by `quantize_rows_on_device` (numpy's bits exactly) and its bf16 copy
freed before the next one is copied, so the device holds one bf16 kernel (and its float32 temporaries) at a
time, never the bf16 model. The host holds one tensor at a time either way. A stream that is already quantized
(a checkpoint written by `python -m convert --quantize ...`) is checked instead: its weight format must be the
mode's, and every scale finite, positive and one per output channel; anything else is refused with the source
and key named.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import jax
import numpy as np

from longcat_jax.checkpoint.param_tree import ParamPath, as_stored, path_str
from longcat_jax.errors import CheckpointError
from longcat_jax.quantization.formats import (
    WEIGHT_FORMATS,
    WeightFormat,
    format_of_dtype,
    quantize_kernel,
    quantize_kernel_on_device,
    quantize_rows_on_device,
)
from longcat_jax.quantization.modes import MODES, QuantScheme, modes_storing, scheme_for
from longcat_jax.quantization.policy import QKERNEL, QSCALE, is_quantized_kernel, is_quantized_module

logger = logging.getLogger(__name__)


def _stored_mode_hint(dtype) -> str:
    fmt = format_of_dtype(dtype)
    return " or ".join(repr(m) for m in modes_storing(fmt)) if fmt else "a matching mode"


def _check_qkernel(array: np.ndarray, path: ParamPath, scheme: QuantScheme | None, source: str) -> None:
    fmt = format_of_dtype(array.dtype)
    if scheme is None:
        raise CheckpointError(
            f"{source}: {path_str(path)} is a quantized weight ({array.dtype}): this checkpoint was written with "
            f"--quantize; load it with quantize={_stored_mode_hint(array.dtype)}"
        )
    if fmt != scheme.weight:
        hint = f"load it with quantize={_stored_mode_hint(array.dtype)}" if fmt else "convert the checkpoint again"
        raise CheckpointError(
            f"{source}: {path_str(path)} is stored as {array.dtype}, but quantize={scheme.mode!r} needs "
            f"{scheme.weight.dtype_name} weights; {hint}, or quantize the original bf16 checkpoint with "
            f"{scheme.mode!r}"
        )
    if array.ndim != 2:
        raise CheckpointError(f"{source}: {path_str(path)} has shape {array.shape}, a quantized kernel is 2-D [out, in]; "
                              "the checkpoint is damaged, convert again")
    if not fmt.integer and np.isnan(array.astype(np.float32)).any():
        raise CheckpointError(f"{source}: {path_str(path)} holds NaN values; the checkpoint is damaged, convert again")


def _check_qscale(scale: np.ndarray, qkernel: np.ndarray, path: ParamPath, source: str) -> np.ndarray:
    if not np.issubdtype(scale.dtype, np.floating) or scale.ndim != 1 or scale.shape[0] != qkernel.shape[0]:
        raise CheckpointError(
            f"{source}: {path_str(path)} is {scale.dtype} {scale.shape}; a quantized kernel of shape {qkernel.shape} "
            f"needs one float scale per output channel ({qkernel.shape[0]},); the checkpoint is damaged, convert again"
        )
    values = scale.astype(np.float32)
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        first = int(np.argmax(bad))
        raise CheckpointError(
            f"{source}: {path_str(path)} holds {int(bad.sum())} invalid scale(s) (channel {first}: {values[first]}); "
            "scales must be finite and positive. The checkpoint is damaged; convert again"
        )
    return values


def quantize_tensors(
    tensors: Iterable[tuple[ParamPath, np.ndarray]],
    mode: str | QuantScheme | None,
    *,
    source: str = "checkpoint",
    device: jax.Device | None = None,
) -> Iterator[tuple[ParamPath, np.ndarray | jax.Array]]:
    """The stream with every quantized Linear's kernel as (qkernel, qscale); other tensors pass unchanged.

    mode: 'none' passes float tensors through and refuses quantized ones (the model would be built without
    quantized layers); 'fp8', 'fp8-weight-only', 'int8' quantize float kernels and check quantized ones.
    Quantized pairs are yielded together, qkernel first.
    device: None quantizes on the host (numpy arrays out); a device quantizes there (jax arrays on it out, the
    same bits), one kernel at a time.
    """
    scheme = scheme_for(mode)
    pending: dict[ParamPath, dict[str, tuple[ParamPath, np.ndarray]]] = {}
    quantized = 0
    for path, array in tensors:
        path = tuple(path)
        leaf, module = path[-1], path[:-1]
        if leaf in (QKERNEL, QSCALE):
            if leaf == QKERNEL:
                _check_qkernel(np.asarray(array), path, scheme, source)
            elif scheme is None:
                raise CheckpointError(f"{source}: {path_str(path)} is a quantization scale: this checkpoint was "
                                      f"written with --quantize; load it with one of {list(MODES[1:])}")
            if not is_quantized_module(module):
                raise CheckpointError(
                    f"{source}: {path_str(path)} is quantized, but this version keeps {path_str(module)} in high "
                    "precision; convert the original checkpoint again"
                )
            parts = pending.setdefault(module, {})
            parts[leaf] = (path, np.asarray(array))
            if len(parts) == 2:
                del pending[module]
                qkernel = parts[QKERNEL][1]
                scale_path, scale = parts[QSCALE]
                yield parts[QKERNEL]
                yield scale_path, _check_qscale(scale, qkernel, scale_path, source)
            continue
        if scheme is not None and is_quantized_kernel(path):
            if device is None:
                qkernel, qscale = quantize_kernel(np.asarray(array), scheme.weight)
            else:
                qkernel, qscale = _quantize_on(device, np.asarray(array), scheme.weight)
            quantized += 1
            yield (*module, QKERNEL), qkernel
            yield (*module, QSCALE), qscale
            continue
        yield path, array
    if pending:
        module, parts = next(iter(pending.items()))
        missing = QSCALE if QKERNEL in parts else QKERNEL
        raise CheckpointError(
            f"{source}: {path_str((*module, missing))} is missing ({len(pending)} quantized Linear(s) incomplete); "
            "the checkpoint is incomplete, convert again"
        )
    if quantized:
        logger.info("%s: quantized %d Linear kernels to %s", source, quantized, scheme.weight.name)


def _quantize_on(device: jax.Device, kernel: np.ndarray, fmt: WeightFormat) -> tuple[jax.Array, jax.Array]:
    """kernel [in, out] quantized on `device`: copied as it lies in memory (a transposed view of a torch [out, in]
    weight goes as [out, in]), and waited for, so its bf16 copy is freed before the next kernel is copied."""
    stored, axes = as_stored(kernel)
    if axes == (1, 0):  # [in, out] as a view of [out, in]: the rows as they lie
        result = quantize_rows_on_device(jax.device_put(stored, device), fmt)
    else:
        result = quantize_kernel_on_device(jax.device_put(kernel, device), fmt)
    return jax.block_until_ready(result)


def stored_quantization(dtypes: Iterable[tuple[ParamPath, str]]) -> str | None:
    """The weight format name ('fp8_e4m3', 'int8') of a converted checkpoint from its index (path, dtype name)
    pairs, None if it is not quantized. Lets a loader refuse a mismatched `quantize` before reading a tensor."""
    by_name = {fmt.dtype_name: fmt.name for fmt in WEIGHT_FORMATS}
    found = {by_name.get(name, name) for path, name in dtypes if tuple(path)[-1] == QKERNEL}
    if len(found) > 1:
        raise CheckpointError(f"checkpoint mixes quantized weight formats {sorted(found)}; convert again")
    return found.pop() if found else None
