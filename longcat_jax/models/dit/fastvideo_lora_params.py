"""LoRA files in FastVideo's naming -> per-Linear low-rank factors in our layout (as `lora_params` gives them).

FastVideo's conversion writes each LoRA (`lora/distilled/cfg_step_lora.safetensors`,
`lora/refinement/refinement_lora.safetensors`) per FastVideo module M (`fastvideo_params` names them):
`M.lora_A` [rank, in], `M.lora_B` [out, rank] and `M.lora_alpha` [] (FastVideo scales by alpha / rank, rank the
rows of lora_A). A fused Linear of ours (self attention's qkv, cross attention's kv) is split there into its
parts (to_q, to_k, to_v; to_k, to_v), each with its own factors. They become one update of the fused Linear:
- parts that share one lora_A (the original's `lora_up.weight` on the fused Linear, split by outputs) give that
  lora_A as down and their lora_B side by side as up: the original's factors;
- otherwise the parts' lora_A are stacked into down and their lora_B placed block-diagonally in up (a part
  without a LoRA gets zero columns): the original's `lora_up.blocks.N` form, the same update.
alpha_scale is alpha / rank as stored (FastVideo's conversion stores the original's alpha_scale * rank; FastVideo
itself truncates alpha to an integer, we keep the original's scale), the same for the parts of one Linear. Every
name, factor, shape and dtype is checked before anything is yielded.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping

import numpy as np

from longcat_jax.checkpoint.param_tree import ParamPath, path_str
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.fastvideo_params import original_module
from longcat_jax.models.dit.lora_params import ALPHA, DOWN, LORA_PREFIX, UP, lora_tensors, require_lora_shapes
from longcat_jax.models.dit.params import ModulePath, expected_parameters, module_path

A, B, ALPHA_NAME = "lora_A", "lora_B", "lora_alpha"
_TENSOR_NAME = re.compile(rf"(?P<module>.+)\.(?P<slot>{A}|{B}|{ALPHA_NAME})")


@dataclasses.dataclass
class _Linear:
    """The FastVideo factors of one Linear of ours: {part: {slot: tensor name}} of its `parts` parts."""

    original: str
    parts: int
    names: dict[int, dict[str, str]] = dataclasses.field(default_factory=dict)


def is_fastvideo_lora(ckpt: SafetensorsCheckpoint) -> bool:
    """True if the file names its tensors as FastVideo does (`M.lora_A`, ...), not as the original LongCat LoRA."""
    names = ckpt.names()
    return not any(n.startswith(LORA_PREFIX) for n in names) and any(_TENSOR_NAME.fullmatch(n) for n in names)


def _plan(ckpt: SafetensorsCheckpoint, config: DiTConfig | None) -> dict[ModulePath, _Linear]:
    """The file's tensor names grouped by the Linear of ours they update, every one checked (headers only)."""
    linears: dict[ModulePath, _Linear] = {}
    for name in ckpt.names():
        match = _TENSOR_NAME.fullmatch(name)
        mapped = original_module(match.group("module")) if match else None
        if mapped is None:
            raise CheckpointError(f"{ckpt.path}: {name!r} is not a LoRA tensor of FastVideo's LongCat DiT "
                                  f"(MODULE.{A}, MODULE.{B} or MODULE.{ALPHA_NAME})")
        original, part, parts = mapped
        ours = module_path(original)
        if ours[1] != "linear":
            raise CheckpointError(f"{ckpt.path}: LoRA tensor {name!r} targets {match.group('module')!r}, which is not "
                                  "a Linear of the DiT")
        linear = linears.setdefault(ours[0], _Linear(original, parts))
        if linear.original != original:
            raise CheckpointError(f"{ckpt.path}: LoRA tensors of {linear.original!r} and of {original!r} (as {name!r}) "
                                  f"both update {path_str(ours[0])} (a block number written two ways); keep one of them")
        linear.names.setdefault(part, {})[match.group("slot")] = name
    expected = expected_parameters(config) if config is not None else None
    for path, linear in linears.items():
        _check(ckpt, path, linear, expected, config)
    ckpt.require_float(ckpt.names(), "a LoRA")
    return linears


def _check(ckpt: SafetensorsCheckpoint, path: ModulePath, linear: _Linear,
           expected: Mapping[ParamPath, tuple[int, ...]] | None, config: DiTConfig | None) -> None:
    """Every part complete, ranks agreeing, one input width and output width per part (and the DiT's, if known)."""
    for part, names in sorted(linear.names.items()):
        missing = [slot for slot in (A, B, ALPHA_NAME) if slot not in names]
        if missing:
            present = next(iter(names.values()))
            raise CheckpointError(f"{ckpt.path}: the LoRA of {present.rpartition('.')[0]!r} lacks {missing}")
        require_lora_shapes(ckpt, names[A].rpartition(".")[0], names[A], [names[B]], names[ALPHA_NAME],
                            f"{A} [rank, in], {B} [out, rank], {ALPHA_NAME} one number")
    widths = {(ckpt.shape(n[A])[1], ckpt.shape(n[B])[0]) for n in linear.names.values()}
    if len(widths) != 1:
        raise CheckpointError(f"{ckpt.path}: the LoRA parts of {linear.original!r} ({sorted(linear.names)}) map "
                              f"different widths {sorted(widths)}")
    in_features, out_part = widths.pop()
    if expected is not None:
        kernel = expected.get((*path, "kernel"))
        if kernel is None:
            raise CheckpointError(f"{ckpt.path}: the LoRA targets {linear.original!r}, which this DiT of depth "
                                  f"{config.depth} lacks")
        if kernel != (in_features, out_part * linear.parts):
            raise CheckpointError(
                f"{ckpt.path}: the LoRA of {linear.original!r} maps {in_features} -> {out_part * linear.parts} "
                f"features but {path_str(path)} of this DiT maps {kernel[0]} -> {kernel[1]}"
            )


def _factors(ckpt: SafetensorsCheckpoint, linear: _Linear) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """(down [in, R], up [R, out], alpha_scale) of one Linear of ours from its FastVideo parts."""
    parts = {p: {slot: ckpt.read(name) for slot, name in names.items()} for p, names in sorted(linear.names.items())}
    scales = {p: float(np.asarray(f[ALPHA_NAME], np.float64).reshape(())) / f[A].shape[0] for p, f in parts.items()}
    if len(set(scales.values())) != 1:
        raise CheckpointError(f"{ckpt.path}: the LoRA parts of {linear.original!r} have different alpha / rank "
                              f"{scales}; one Linear takes one scale")
    alpha_scale = np.float32(next(iter(scales.values())))
    downs = [f[A] for f in parts.values()]
    if len(parts) == linear.parts and all(np.array_equal(d, downs[0]) for d in downs[1:]):
        return downs[0].T.copy(), np.concatenate([f[B] for f in parts.values()], axis=0).T.copy(), alpha_scale
    out_part = next(iter(parts.values()))[B].shape[0]
    ranks = [d.shape[0] for d in downs]
    up = np.zeros((sum(ranks), out_part * linear.parts), dtype=np.result_type(*(f[B].dtype for f in parts.values())))
    row = 0
    for part, factors in parts.items():
        up[row:row + factors[A].shape[0], part * out_part:(part + 1) * out_part] = factors[B].T
        row += factors[A].shape[0]
    return np.concatenate(downs, axis=0).T.copy(), up, alpha_scale


def fastvideo_lora_tensors(ckpt: SafetensorsCheckpoint,
                           config: DiTConfig | None = None) -> Iterator[tuple[ParamPath, np.ndarray]]:
    """(our path, array) for each factor of a FastVideo-format LoRA, one Linear at a time, as `lora_tensors` gives
    them for the original format. Raises CheckpointError at the call on a name without a Linear, a missing factor,
    shapes that do not form a LoRA (or, with `config`, do not fit the DiT) and non-float dtypes."""
    linears = _plan(ckpt, config)
    return _stream(ckpt, linears)


def _stream(ckpt: SafetensorsCheckpoint, linears: dict[ModulePath, _Linear]) -> Iterator[tuple[ParamPath, np.ndarray]]:
    for path in sorted(linears, key=lambda p: tuple((0, x) if isinstance(x, int) else (1, x) for x in p)):
        down, up, alpha_scale = _factors(ckpt, linears[path])
        yield (*path, DOWN), down
        yield (*path, UP), up
        yield (*path, ALPHA), np.asarray(alpha_scale, dtype=np.float32)


def lora_tensor_count(ckpt: SafetensorsCheckpoint) -> int:
    """How many tensors `dit_lora_tensors` yields for the file (three per Linear in FastVideo's naming; for the
    original's, its number of tensors), from the names alone: a progress bar's total."""
    if not is_fastvideo_lora(ckpt):
        return len(ckpt.names())
    modules = {original_module(m.group("module")) for n in ckpt.names() if (m := _TENSOR_NAME.fullmatch(n))}
    return 3 * len({module[0] for module in modules if module is not None})


def dit_lora_tensors(ckpt: SafetensorsCheckpoint,
                     config: DiTConfig | None = None) -> Iterator[tuple[ParamPath, np.ndarray]]:
    """The factors of a LoRA file in either naming: FastVideo's (`fastvideo_lora_tensors`) or the original's
    (`lora_params.lora_tensors`)."""
    return fastvideo_lora_tensors(ckpt, config) if is_fastvideo_lora(ckpt) else lora_tensors(ckpt, config)
