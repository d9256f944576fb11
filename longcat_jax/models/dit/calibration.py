"""GPTQ for the whole DiT: its blocks quantized one after another, each on the inputs the blocks before it give.

    tensors, _ = checkpoint_dit_tensors(ckpt, config, block_order=True)
    quantized = gptq_tensors(tensors, config, "int8", random_calibration(config))   # the stream, quantized

The layers outside the blocks (which stay in high precision) embed every calibration call once. Then, for block
i: its float weights go on the device, its eight quantized Linears (`quantization.policy`) record their inputs'
second moments over every call (`layers.Linear.record_inputs`), each kernel is rounded by GPTQ
(`quantization.gptq`) into the mode's weight format, and the block runs again with the rounded weights to give
block i + 1 its inputs, so each block's rounding compensates for what the earlier blocks' rounding did to its
inputs. The device holds one block's weights and every call's hidden state; the host one block's tensors.

The output is the stream `quantization.quantize_tensors` gives for the same mode (qkernel [out, in] and qscale
[out] per quantized Linear, with round to nearest's scales), so the converter writes it and every loader reads it
as any quantized checkpoint. `gptq_quantize_dit` does the same for a DiT already in memory (tests, benchmarks).
Self attention runs dense here, whatever the config's BSA says.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from longcat_jax.checkpoint.param_tree import ParamPath, fill_model, path_str
from longcat_jax.errors import CheckpointError, ConfigError
from longcat_jax.models.dit.block import DiTBlock
from longcat_jax.models.dit.calibration_inputs import CalibrationInputs
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.params import block_order_key
from longcat_jax.models.dit.transformer import DiTEnds, LongCatDiT
from longcat_jax.quantization.formats import dequantize_kernel
from longcat_jax.quantization.gptq import gptq_quantize_kernel
from longcat_jax.quantization.modes import scheme_for
from longcat_jax.quantization.policy import QKERNEL, QSCALE, QUANTIZED_BLOCK_LINEARS, is_quantized_kernel

logger = logging.getLogger(__name__)

CPU_WARNING_WIDTH = 2048  # DiTs at least this wide are slow to calibrate on a CPU
ROWS_PER_INPUT = 2  # fewer calibration rows than this times a Linear's input width: warned of


@nnx.jit(static_argnames="grid")
def _embed(ends: DiTEnds, latents, timestep, text, text_mask, grid):
    return ends.embed(latents, timestep, text, text_mask, grid)


@nnx.jit(static_argnames="grid")
def _run_block(block: DiTBlock, x, text, text_mask, t_emb, grid):
    return block(x, text, text_mask, t_emb, grid)[0]


def _module(block: DiTBlock, inner: tuple[str, ...]):
    module = block
    for name in inner:
        module = getattr(module, name)
    return module


def _blocks(stream: Iterator, first: tuple[ParamPath, np.ndarray], source: str) -> Iterator[tuple[int, list]]:
    """(index, [(path, array), ...]) per block, from `first` (block 0's first tensor) and the rest of a stream whose
    blocks follow one another in order 0, 1, ..."""
    index, current = 0, [first]
    for path, array in stream:
        path = tuple(path)
        if path[0] == "blocks" and path[1] == index:
            current.append((path, array))
            continue
        if path[0] != "blocks" or path[1] != index + 1:
            raise CheckpointError(
                f"{source}: GPTQ calibration reads the DiT's layers outside its blocks first and then block 0, 1, "
                f"... in order (params.block_order_key); got {path_str(path)} after block {index}"
            )
        yield index, current
        index, current = index + 1, [(path, array)]
    yield index, current


def _warn_of_few_rows(linears: dict) -> None:
    """Warns of Linears whose calibration saw fewer input rows than `ROWS_PER_INPUT` times their input width: there
    GPTQ fits the calibration inputs' few directions and can round worse than to nearest on other inputs (measured on
    a 256-wide DiT: w2 fitted on 256 rows of its 768 inputs had 1.4x round to nearest's error on held-out ones)."""
    few = [f"{'.'.join(inner)} ({int(linear.input_rows.get_value())} rows, {linear.in_features} inputs)"
           for inner, linear in linears.items() if linear.input_rows.get_value() < ROWS_PER_INPUT * linear.in_features]
    if few:
        logger.warning("GPTQ calibration has few input rows for %s; give more or longer calibration calls (the text's "
                       "kv sees the prompts' tokens only: more prompts)", ", ".join(few))


def _stored_kernels(finished: Iterator[tuple[ParamPath, np.ndarray]]):
    """A function of a block index giving ({kernel path: (qkernel, qscale)}, {kernel path: qkernel}) of the block's
    quantized kernels in `finished` (a prefix of the quantized stream, read once in order): those with both arrays,
    and one whose qscale the interrupted run did not write (a chunk can end between the two)."""
    pending = next(finished, None)

    def block(index: int) -> tuple[dict[ParamPath, tuple[np.ndarray, np.ndarray]], dict[ParamPath, np.ndarray]]:
        nonlocal pending
        found = {}
        while pending is not None and (pending[0][0] != "blocks" or pending[0][1] <= index):
            path, array = tuple(pending[0]), pending[1]
            if path[0] == "blocks" and path[1] == index and path[-1] in (QKERNEL, QSCALE):
                found[path] = array
            pending = next(finished, None)
        kernels = {path[:-1] for path in found}
        pairs = {(*k, "kernel"): (found[(*k, QKERNEL)], found[(*k, QSCALE)]) for k in kernels
                 if (*k, QKERNEL) in found and (*k, QSCALE) in found}
        lone = {(*k, "kernel"): found[(*k, QKERNEL)] for k in kernels
                if (*k, QKERNEL) in found and (*k, QSCALE) not in found}
        return pairs, lone

    return block


def gptq_tensors(tensors: Iterable[tuple[ParamPath, np.ndarray]], config: DiTConfig, mode: str,
                 inputs: CalibrationInputs, *, dtype=jnp.bfloat16, source: str = "checkpoint",
                 progress: bool = True, finished: Iterable[tuple[ParamPath, np.ndarray]] = ()
                 ) -> Iterator[tuple[ParamPath, np.ndarray]]:
    """A float DiT tensor stream in `block_order_key`'s order -> the same stream with each quantized Linear's
    kernel as (qkernel, qscale) rounded by GPTQ on `inputs` (run with activations in `dtype`); the other tensors
    pass unchanged. Refuses a mode that quantizes nothing, inputs the DiT cannot take, and a stream out of order.

    `finished`: what an interrupted run of this same stream wrote (a prefix of its output, read lazily when block 0
    is reached: `orbax_chunks.finished_tensors`). Its kernels are taken as stored instead of rounded again, and a
    block whose kernels are all stored skips GPTQ's recording pass: it only runs forward on them to give the next
    block its inputs, as the interrupted run did, so a resumed conversion writes what an uninterrupted one would."""
    scheme = scheme_for(mode)
    if scheme is None:
        raise ConfigError("GPTQ calibration quantizes; choose a quantize mode ('fp8', 'fp8-weight-only', 'int8')")
    inputs.check_fits(config)
    stream = iter(tensors)
    ends: list[tuple[ParamPath, np.ndarray]] = []
    first = None
    for path, array in stream:
        if path[0] == "blocks":
            first = (tuple(path), array)
            break
        ends.append((tuple(path), array))
    if first is None or first[0][1] != 0:
        raise CheckpointError(f"{source}: GPTQ calibration needs the DiT's blocks after its other layers, from block "
                              f"0 on (params.block_order_key); got {'no block' if first is None else path_str(first[0])}")
    end_layers = fill_model(lambda: DiTEnds.new(config, rngs=nnx.Rngs(0), dtype=dtype), ends, source=source)
    yield from ends
    states = []
    for index in range(inputs.calls):
        latents, timestep, text, text_mask = (jnp.asarray(a) for a in inputs.call(index))
        grid = end_layers.token_grid(latents, timestep, text)
        states.append((_embed(end_layers, latents, timestep, text, text_mask, grid), grid))
    logger.info("%s: GPTQ into %s on %d calibration call(s) of %d tokens", source, scheme.weight.name, inputs.calls,
                states[0][0].x.shape[1])
    if jax.default_backend() == "cpu" and config.hidden_size >= CPU_WARNING_WIDTH:
        logger.warning("GPTQ runs on the CPU: at the real width a block took about 10 minutes on 2 cores (`--calibration "
                       "random`'s 16 calls, bf16), so 48 blocks take about 8 hours (about 4 minutes on an H200); run "
                       "the conversion where JAX sees a GPU")

    def make_block() -> DiTBlock:
        return DiTBlock(config.hidden_size, config.num_heads, config.ffn_hidden_size, config.adaln_tembed_dim,
                        rngs=nnx.Rngs(0), dtype=dtype, param_dtype=jnp.float32)

    stored = _stored_kernels(iter(finished))
    for index, block_tensors in tqdm(_blocks(stream, first, source), total=config.depth,
                                     desc="GPTQ", unit="block", disable=not progress):
        block = fill_model(make_block, ((path[2:], array) for path, array in block_tensors),
                           source=f"{source} block {index}")
        linears = {inner: _module(block, inner) for inner in QUANTIZED_BLOCK_LINEARS}
        kept, lone = stored(index)
        if any(is_quantized_kernel(path) and path not in kept for path, _ in block_tensors):
            for linear in linears.values():
                linear.record_inputs()
            for embedded, grid in states:
                _run_block(block, embedded.x, embedded.text, embedded.text_mask, embedded.t_emb, grid)
            if index == 0:
                _warn_of_few_rows(linears)
        rounded = {}
        for path, array in block_tensors:
            if is_quantized_kernel(path):
                linear = linears[tuple(path[2:-1])]
                qkernel, qscale = kept[path] if path in kept else gptq_quantize_kernel(
                    array, linear.input_second_moment(), scheme.weight)
                if path in lone and not np.array_equal(lone[path], np.asarray(qkernel)):
                    # the resumed conversion keeps the stored qkernel and writes this qscale: they must agree
                    raise CheckpointError(f"{source}: resuming, block {index}'s {'.'.join(map(str, path[2:]))} rounds "
                                          "differently from the interrupted run (another device or JAX version?); "
                                          "convert again without --resume")
                linear.record_inputs(False)
                linear.kernel.set_value(dequantize_kernel(qkernel, qscale, jnp.float32))
                rounded[path] = (np.asarray(qkernel), np.asarray(qscale))
        for position, (embedded, grid) in enumerate(states):
            x = _run_block(block, embedded.x, embedded.text, embedded.text_mask, embedded.t_emb, grid)
            states[position] = (embedded._replace(x=x), grid)
        for path, array in block_tensors:
            if path in rounded:
                yield (*path[:-1], QKERNEL), rounded[path][0]
                yield (*path[:-1], QSCALE), rounded[path][1]
            else:
                yield path, array
        jax.block_until_ready([state[0].x for state in states])


def gptq_quantize_dit(model: LongCatDiT, mode: str, inputs: CalibrationInputs, *, progress: bool = False
                      ) -> LongCatDiT:
    """A new DiT quantized by `mode` with GPTQ on `inputs`, from the float weights of `model` (unchanged); the
    activation dtype and parameter dtype are `model`'s."""
    flat = [(tuple(path), variable.get_value()) for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    flat.sort(key=lambda entry: block_order_key(entry[0]))
    param_dtype = model.blocks[0].adaln.kernel.get_value().dtype
    tensors = gptq_tensors(((path, np.asarray(array)) for path, array in flat), model.config, mode, inputs,
                           dtype=model.dtype, source="DiT in memory", progress=progress)
    return fill_model(lambda: LongCatDiT(model.config, rngs=nnx.Rngs(0), dtype=model.dtype, param_dtype=param_dtype,
                                         quantize=mode), tensors, source="GPTQ-quantized DiT")
