"""LoRA files in the original LongCat naming -> per-Linear low-rank factors in our layout.

Original names: `lora___lorahyphen___blocks___lorahyphen___0___lorahyphen___attn___lorahyphen___qkv`
+ `.lora_down.weight` [rank, in], `.lora_up.weight` [out, rank] (or `.lora_up.blocks.N.weight`
[out/n, rank] each, when the update of a fused Linear is split in n parts), `.alpha_scale` [].
Ours, per Linear at module path P: P + ("lora_down",) [in, R], P + ("lora_up",) [R, out] (split
parts become one block-diagonal matrix, which computes the same), P + ("alpha_scale",) [] float32.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence

import numpy as np

from longcat_jax.checkpoint.param_tree import ParamPath, path_str
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.params import ModulePath, expected_parameters, module_path

LORA_PREFIX = "lora___lorahyphen___"
LORA_HYPHEN = "___lorahyphen___"
DOWN, UP, ALPHA = "lora_down", "lora_up", "alpha_scale"
_FORM = ("lora_down.weight [rank, in], lora_up.weight [out, rank] or lora_up.blocks.N.weight [out / n, rank / n] "
         "each, alpha_scale one number")
_TENSOR_NAME = re.compile(r"(?P<lora>.+?)\.(?:(?P<down>lora_down\.weight)|(?P<up>lora_up\.weight)"
                          r"|lora_up\.blocks\.(?P<part>\d+)\.weight|(?P<alpha>alpha_scale))")


def original_module_name(lora_name: str) -> str:
    """'lora___lorahyphen___blocks___lorahyphen___0___lorahyphen___attn___lorahyphen___qkv' -> 'blocks.0.attn.qkv'."""
    return lora_name.removeprefix(LORA_PREFIX).replace(LORA_HYPHEN, ".")


def require_lora_shapes(ckpt: SafetensorsCheckpoint, module: str, down: str, ups: Sequence[str], alpha: str,
                        form: str) -> None:
    """Refuses factors of the LoRA of `module` (the tensor names' common prefix) that cannot form a LoRA, naming
    them and the `form` they must have: the down factor and every up factor 2-D, the ups' ranks adding up to the
    down's, the alpha one number. Checked from the headers at plan time (both namings share it), so a bad file
    fails before anything is written instead of at a reshape or at use."""
    down_shape, alpha_shape = ckpt.shape(down), ckpt.shape(alpha)
    up_shapes = [ckpt.shape(up) for up in ups]
    if (len(down_shape) != 2 or any(len(s) != 2 for s in up_shapes) or math.prod(alpha_shape) != 1
            or down_shape[0] != sum(s[1] for s in up_shapes)):
        factors = ", ".join(f"{name.removeprefix(module + '.')} {list(shape)}" for name, shape in
                            [(down, down_shape), *zip(ups, up_shapes, strict=True), (alpha, alpha_shape)])
        raise CheckpointError(f"{ckpt.path}: the LoRA of {module!r} has {factors}, which do not form a LoRA ({form}); "
                              "the file is damaged or not a LoRA, get it again")


def _up_matrix(ckpt: SafetensorsCheckpoint, names: dict[str, str], parts: dict[int, str]) -> np.ndarray:
    """The [R, out] up factor; split parts [out/n, r] become a block-diagonal [n*r, out] matrix."""
    if UP in names:
        return np.ascontiguousarray(ckpt.read(names[UP]).T)
    blocks = [ckpt.read(parts[i]) for i in range(len(parts))]
    rank = blocks[0].shape[1]
    out_part = blocks[0].shape[0]
    up = np.zeros((rank * len(blocks), out_part * len(blocks)), dtype=blocks[0].dtype)
    for i, block in enumerate(blocks):
        up[i * rank : (i + 1) * rank, i * out_part : (i + 1) * out_part] = block.T
    return up


def lora_tensors(ckpt: SafetensorsCheckpoint, config: DiTConfig | None = None) -> Iterator[tuple[ParamPath, np.ndarray]]:
    """(our path, array) for each factor of an original LongCat LoRA file, one Linear at a time.

    Every name is checked before anything is yielded: unknown names, modules the DiT does not
    have (or that are not Linear), one module named twice (`___1___` and `___01___`), missing factors,
    factors that do not form a LoRA (`require_lora_shapes`), non-float dtypes and (with `config`)
    shapes that do not fit the DiT's Linear raise CheckpointError.
    """
    modules: dict[str, dict[str, str]] = {}
    split_parts: dict[str, dict[int, str]] = {}
    for name in ckpt.names():
        match = _TENSOR_NAME.fullmatch(name)
        if match is None or not match.group("lora").startswith(LORA_PREFIX):
            raise CheckpointError(f"{ckpt.path}: {name!r} is not a LongCat LoRA tensor name")
        lora = match.group("lora")
        slot = DOWN if match.group("down") else UP if match.group("up") else ALPHA if match.group("alpha") else None
        if slot is None:
            split_parts.setdefault(lora, {})[int(match.group("part"))] = name
            modules.setdefault(lora, {})
        else:
            modules.setdefault(lora, {})[slot] = name
    expected = expected_parameters(config) if config is not None else None
    plan: list[tuple[ModulePath, dict[str, str], dict[int, str]]] = []
    targets: dict[ModulePath, str] = {}  # our module path -> the LoRA name updating it
    for lora, names in modules.items():
        original = original_module_name(lora)
        mapped = module_path(original)
        if mapped is None or mapped[1] != "linear":
            raise CheckpointError(f"{ckpt.path}: LoRA {lora!r} targets {original!r}, which is not a Linear of the DiT")
        parts = split_parts.get(lora, {})
        if parts and (UP in names or sorted(parts) != list(range(len(parts)))):
            raise CheckpointError(f"{ckpt.path}: LoRA {lora!r} has an inconsistent set of lora_up parts")
        missing = [s for s in (DOWN, ALPHA) if s not in names] + ([] if UP in names or parts else [UP])
        if missing:
            raise CheckpointError(f"{ckpt.path}: LoRA {lora!r} lacks {missing}")
        if mapped[0] in targets:
            raise CheckpointError(f"{ckpt.path}: LoRAs {targets[mapped[0]]!r} and {lora!r} both update "
                                  f"{path_str(mapped[0])} (a block number written two ways); keep one of them")
        targets[mapped[0]] = lora
        ups = [names[UP]] if UP in names else [parts[i] for i in sorted(parts)]
        require_lora_shapes(ckpt, lora, names[DOWN], ups, names[ALPHA], _FORM)
        up_shapes = [ckpt.shape(up) for up in ups]
        if len(set(up_shapes)) != 1:
            raise CheckpointError(f"{ckpt.path}: the lora_up parts of LoRA {lora!r} have different shapes {up_shapes}; "
                                  "the parts of one Linear share one shape")
        in_features = ckpt.shape(names[DOWN])[1]
        out_features = sum(s[0] for s in up_shapes)
        if expected is not None:
            kernel = expected.get((*mapped[0], "kernel"))
            if kernel is None:
                raise CheckpointError(
                    f"{ckpt.path}: LoRA {lora!r} targets {original!r}, which this DiT of depth {config.depth} lacks"
                )
            if kernel != (in_features, out_features):
                raise CheckpointError(
                    f"{ckpt.path}: LoRA {lora!r} maps {in_features} -> {out_features} features but "
                    f"{path_str(mapped[0])} of this DiT maps {kernel[0]} -> {kernel[1]}"
                )
        plan.append((mapped[0], names, parts))
    ckpt.require_float(ckpt.names(), "a LoRA")
    plan.sort(key=lambda item: tuple((0, p) if isinstance(p, int) else (1, p) for p in item[0]))
    for path, names, parts in plan:
        yield (*path, DOWN), np.ascontiguousarray(ckpt.read(names[DOWN]).T)
        yield (*path, UP), _up_matrix(ckpt, names, parts)
        yield (*path, ALPHA), np.asarray(ckpt.read(names[ALPHA]), dtype=np.float32).reshape(())
