"""Writes a complete LongCat-Video checkpoint folder with random weights, laid out as the download is.

    python tools/random_checkpoint.py /data/longcat-random            # the released sizes: about 42 GB, bf16
    python tools/random_checkpoint.py /tmp/longcat-small --small       # small models for a CPU: about 25 MB

What it writes, each part in the original's format so every loader (and `python -m convert`) reads it as a download:

    dit/            config.json (the released dit/config.json's values) + safetensors shards and their index (bf16)
    text_encoder/   config.json (UMT5-XXL) + safetensors shards and their index (bf16)
    vae/            config.json (Wan 2.1) + diffusion_pytorch_model.safetensors (bf16)
    scheduler/      scheduler_config.json: FlowMatchEulerDiscreteScheduler with LongCat's values (the loader's defaults)
    tokenizer/      spiece.model: the built-in model's small umT5-style tokenizer (its ids fit any UMT5 vocabulary; a
                    prompt becomes other tokens than with the real one, padded to the same 512)
    lora/           cfg_step_lora.safetensors and refinement_lora.safetensors with the released files' names and
                    shapes: rank 128 (4 with --small), alpha_scale 0.5, the fused qkv / kv / adaLN Linears' up
                    factors split in parts (`lora_up.blocks.N.weight`); the distill LoRA on every block's attention,
                    cross attention and FFN, the refinement LoRA on those and the adaLN Linears and the final layer

Names and shapes come from the loaders' own name maps (`longcat_jax.models.*.params`; the text encoder's per-layer
table is private there, `_block_shapes`, and read as it is), so the folder fits them by construction; the loaders check
every name and shape again when it is read. Values: weight matrices and convolutions
N(0, 1/fan_in), embeddings N(0, 1) (the UMT5 query also / sqrt(d_kv), as T5 initialises it), biases 0, norm scales 1,
LoRA up factors small, so activations keep their scale through every model and a run's NaN guard stays quiet. Large
tensors are drawn with `jax.random` on the default device (the GPU where there is one: seconds for the whole DiT),
small ones with numpy; shards are written by `safetensors.numpy.save_file` in background threads while the next
shard is drawn.

A folder this tool finished holds `random_checkpoint.json` (what was written, and the seed); the same command on such
a folder keeps it (`--force` writes it again), and the folder is written as `<folder>.partial` and renamed when
complete, so a folder that exists is whole.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from kernels import BSAParams  # noqa: E402
from longcat_jax.checkpoint.layout import (  # noqa: E402
    DISTILL_LORA,
    DIT,
    LORA_DIR,
    REFINE_LORA,
    SCHEDULER,
    TEXT_ENCODER,
    TOKENIZER,
    VAE,
)
from longcat_jax.cli_logging import setup_cli_logging  # noqa: E402
from longcat_jax.models.dit.config import DiTConfig  # noqa: E402
from longcat_jax.models.text_encoder.config import UMT5Config  # noqa: E402
from longcat_jax.models.vae.config import VAEConfig  # noqa: E402

logger = logging.getLogger("random_checkpoint")

MARKER = "random_checkpoint.json"
FORMAT = "longcat-jax/random-checkpoint/1"
BF16 = np.dtype(ml_dtypes.bfloat16)
SHARD_BYTES = 4 * 2**30  # the DiT and text encoder in shards of at most this size
DEVICE_DRAW_ELEMENTS = 1 << 20  # tensors at least this large are drawn with jax.random on the default device
WRITERS = 2  # shards written at once while the next one is drawn

# The released checkpoint's configs (dit/config.json, text_encoder/config.json, vae/config.json; /work/shared REFERENCE).
RELEASED_DIT = DiTConfig(hidden_size=4096, depth=48, num_heads=32, caption_channels=4096, mlp_ratio=4,
                         adaln_tembed_dim=512, frequency_embedding_size=256, patch_size=(1, 2, 2), enable_bsa=False,
                         bsa_params=BSAParams(sparsity=0.9375, cdf_threshold=None, chunk_3d_shape_q=(4, 4, 4),
                                              chunk_3d_shape_k=(4, 4, 4)),
                         text_tokens_zero_pad=True)
RELEASED_TEXT = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)
RELEASED_VAE = VAEConfig()
RELEASED_LORA_RANK = 128
SCHEDULER_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0}
LORA_ALPHA_SCALE = 0.5  # alpha 64 / rank 128, as the released files store it
LORA_UP_STD = 0.01  # the up factors' scale: an update about 1% of a weight's, visible but harmless
# Linears each released LoRA adapts, per block ("blocks.N." prefixed) and outside the blocks, with the number of parts
# its up factor is split in (the fused Linears: q/k/v, k/v, the six adaLN modulations, the final layer's two).
DISTILL_BLOCK_LINEARS = {"attn.qkv": 3, "attn.proj": 1, "cross_attn.q_linear": 1, "cross_attn.kv_linear": 2,
                         "ffn.w1": 1, "ffn.w2": 1, "ffn.w3": 1}
REFINE_BLOCK_LINEARS = {**DISTILL_BLOCK_LINEARS, "adaLN_modulation.1": 6}
REFINE_TOP_LINEARS = {"final_layer.adaLN_modulation.1": 2, "final_layer.linear": 1}


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a checkpoint holds: the three models' configs and the LoRAs' rank."""

    dit: DiTConfig
    text: UMT5Config
    vae: VAEConfig
    lora_rank: int

    def to_json(self) -> dict:
        return {"dit": self.dit.to_dict(), "text_encoder": self.text.to_dict(), "vae": self.vae.to_dict(),
                "lora_rank": self.lora_rank}


def released_spec() -> Spec:
    return Spec(RELEASED_DIT, RELEASED_TEXT, RELEASED_VAE, RELEASED_LORA_RANK)


def small_spec() -> Spec:
    """Small models for a CPU in the released ones' proportions where the memory plan cares: the DiT (4 blocks of
    256) and the text encoder (an 8192-token vocabulary of 256) each larger than the VAE's activations at 64x64
    pixels, so a budget that holds the run's stages holds neither whole (the built-in model's VAE dwarfs its DiT)."""
    from longcat_jax.presets import TINY_DIT_CONFIG, TINY_VAE_CONFIG

    dit = dataclasses.replace(TINY_DIT_CONFIG, hidden_size=256, depth=4, num_heads=4, caption_channels=256,
                              adaln_tembed_dim=64)
    text = UMT5Config(vocab_size=8192, d_model=256, d_kv=32, d_ff=512, num_layers=2, num_heads=8)
    return Spec(dit, text, TINY_VAE_CONFIG, lora_rank=4)


# ---------------------------------------------------------------------------------------------- names and shapes
# Each part's tensors: original name -> (shape in the original's torch layout, how to fill it). A fill is a standard
# deviation (float: N(0, std^2)) or a constant ("zeros", "ones").

Fill = float | str


def _torch_fill(name: str, shape: tuple[int, ...]) -> Fill:
    """Biases 0; norm scales (1-D weights, VAE gammas) 1; matrices and kernels N(0, 1/fan_in) (torch layout)."""
    if name.endswith("bias"):
        return "zeros"
    if name.endswith("gamma") or len(shape) == 1:
        return "ones"
    return 1.0 / math.sqrt(math.prod(shape[1:]))


def _one_block(config: DiTConfig, per_block: dict, block_key: Callable) -> dict:
    """`per_block`, entries of a 1-block model, with block 0's repeated for each of `config.depth` blocks (tracing
    all 48 blocks of the real model takes seconds per call; every block has the same parameters). `block_key(key, i)`
    is block 0's `key` for block i, None for the entries outside the blocks."""
    out = {}
    for key, value in per_block.items():
        if block_key(key, 0) is None:
            out[key] = value
        else:
            out.update({block_key(key, i): value for i in range(config.depth)})
    return out


@functools.lru_cache(maxsize=4)
def dit_parameters(config: DiTConfig) -> dict[tuple, tuple[int, ...]]:
    """Our DiT's parameter paths and shapes."""
    from longcat_jax.models.dit.params import expected_parameters

    one = expected_parameters(dataclasses.replace(config, depth=1))
    return _one_block(config, one, lambda path, i: ("blocks", i, *path[2:]) if path[0] == "blocks" else None)


def dit_tensors(config: DiTConfig) -> dict[str, tuple[tuple[int, ...], Fill]]:
    """The original DiT state dict's names and shapes (`models.dit.params.original_tensors`, the loader's map)."""
    from longcat_jax.models.dit.params import original_tensors

    one = {name: tensor.original_shape for name, tensor in original_tensors(dataclasses.replace(config, depth=1)).items()}
    shapes = _one_block(config, one, lambda name, i: f"blocks.{i}.{name[len('blocks.0.'):]}"
                        if name.startswith("blocks.0.") else None)
    return {name: (tuple(shape), _torch_fill(name, tuple(shape))) for name, shape in shapes.items()}


def text_encoder_tensors(config: UMT5Config) -> dict[str, tuple[tuple[int, ...], Fill]]:
    """The original UMT5EncoderModel's names and shapes (T5's initialisation scales)."""
    from longcat_jax.models.text_encoder import params

    tensors = {"shared.weight": ((config.vocab_size, config.d_model), 1.0)}
    for i in range(config.num_layers):
        for rest, shape in params._block_shapes(config).items():
            name = f"encoder.block.{i}.{rest}"
            fill = _torch_fill(name, shape)
            if rest.endswith("SelfAttention.q.weight"):
                fill = fill / math.sqrt(config.d_kv)  # T5's attention is unscaled: the query carries 1/sqrt(d_kv)
            elif rest.endswith("relative_attention_bias.weight"):
                fill = 1.0 / math.sqrt(config.d_model)
            tensors[name] = (shape, fill)
    tensors["encoder.final_layer_norm.weight"] = ((config.d_model,), "ones")
    return tensors


def vae_tensors(config: VAEConfig) -> dict[str, tuple[tuple[int, ...], Fill]]:
    """The original AutoencoderKLWan's names and shapes (the loader's name table)."""
    from longcat_jax.models.vae import params

    shapes = params.expected_shapes(config)
    tensors = {}
    for name, (path, layout) in params.name_table(config).items():
        shape = tuple(layout.original_shape(shapes[path]))
        tensors[name] = (shape, _torch_fill(name, shape))
    return tensors


def lora_tensors(config: DiTConfig, rank: int, *, refine: bool) -> dict[str, tuple[tuple[int, ...], Fill]]:
    """A released LoRA's names and shapes: per Linear `lora_down.weight` [parts * rank, in], the up factor
    [out, rank] or its parts `lora_up.blocks.N.weight` [out / parts, rank], and `alpha_scale` []."""
    from longcat_jax.models.dit.params import module_path
    from longcat_jax.training.lora_file import original_lora_name

    ours = dit_parameters(config)
    linears = {f"blocks.{i}.{name}": parts for i in range(config.depth)
               for name, parts in (REFINE_BLOCK_LINEARS if refine else DISTILL_BLOCK_LINEARS).items()}
    if refine:
        linears.update(REFINE_TOP_LINEARS)
    tensors = {}
    for module, parts in linears.items():
        path, _ = module_path(module)
        in_features, out_features = ours[(*path, "kernel")]
        name = original_lora_name(module)
        tensors[f"{name}.lora_down.weight"] = ((parts * rank, in_features), 1.0 / math.sqrt(in_features))
        if parts == 1:
            tensors[f"{name}.lora_up.weight"] = ((out_features, rank), LORA_UP_STD)
        else:
            for part in range(parts):
                tensors[f"{name}.lora_up.blocks.{part}.weight"] = ((out_features // parts, rank), LORA_UP_STD)
        tensors[f"{name}.alpha_scale"] = ((), "alpha")
    return tensors


# ---------------------------------------------------------------------------------------------- drawing and writing


class Drawer:
    """Random tensors of a fill: large ones with jax.random on the default device (one compilation per shape), small
    ones with numpy; every tensor from its own seed, so the same spec and seed give the same checkpoint."""

    def __init__(self, seed: int):
        import jax
        import jax.numpy as jnp

        self.seed = seed
        self.count = 0

        @functools.partial(jax.jit, static_argnames="shape")
        def scaled(key, std, *, shape):
            return (jax.random.normal(key, shape, jnp.float32) * std).astype(jnp.bfloat16)

        self._jax, self._scaled = jax, scaled

    def __call__(self, shape: tuple[int, ...], fill: Fill) -> np.ndarray:
        self.count += 1
        if fill == "zeros":
            return np.zeros(shape, BF16)
        if fill == "ones":
            return np.ones(shape, BF16)
        if fill == "alpha":
            return np.asarray(LORA_ALPHA_SCALE, np.float32).reshape(shape)
        if math.prod(shape) >= DEVICE_DRAW_ELEMENTS:
            jax = self._jax
            key = jax.random.fold_in(jax.random.key(self.seed), self.count)
            return np.asarray(self._scaled(key, np.float32(fill), shape=tuple(shape)))
        rng = np.random.default_rng([self.seed, self.count])
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(fill)).astype(BF16)


def _shards(tensors: dict[str, tuple[tuple[int, ...], Fill]], shard_bytes: int) -> list[list[str]]:
    """The names in order, cut into shards of at most `shard_bytes` (a larger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, (shape, _) in tensors.items():
        nbytes = math.prod(shape) * BF16.itemsize
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_part(folder: Path, prefix: str, tensors: dict[str, tuple[tuple[int, ...], Fill]], draw: Drawer,
               pool: ThreadPoolExecutor, pending: list[Future], *, shard_bytes: int = SHARD_BYTES,
               single_name: str | None = None) -> int:
    """Writes `tensors` into `folder` as `prefix-0000N-of-0000M.safetensors` shards with `prefix.safetensors.index.json`
    (or one file `single_name`); the drawing happens here, the writing in `pool` (at most `WRITERS` shards waiting).
    Returns the bytes written."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    shards = [list(tensors)] if single_name else _shards(tensors, shard_bytes)
    weight_map, written = {}, 0
    for index, names in enumerate(shards):
        file = single_name or f"{prefix}-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        arrays = {name: draw(*tensors[name]) for name in names}
        written += sum(a.nbytes for a in arrays.values())
        weight_map.update(dict.fromkeys(names, file))
        while len([f for f in pending if not f.done()]) >= WRITERS:
            next(f for f in pending if not f.done()).result()
        pending.append(pool.submit(save_file, arrays, str(folder / file)))
    if not single_name:
        index_file = folder / f"{prefix}.safetensors.index.json"
        index_file.write_text(json.dumps({"metadata": {"total_size": written}, "weight_map": weight_map}, indent=1))
    return written


def _parts(spec: Spec) -> Iterator[tuple[str, Path, str, Callable[[], dict], str | None, dict]]:
    """(label, folder, file prefix, tensors, single file name, config.json) of each part."""
    dit_config = {"_class_name": "LongCatVideoTransformer3DModel", **spec.dit.to_dict()}
    yield "DiT", Path(DIT), "diffusion_pytorch_model", lambda: dit_tensors(spec.dit), None, dit_config
    yield ("text encoder", Path(TEXT_ENCODER), "model", lambda: text_encoder_tensors(spec.text), None,
           spec.text.to_dict())
    yield ("VAE", Path(VAE), "diffusion_pytorch_model", lambda: vae_tensors(spec.vae),
           "diffusion_pytorch_model.safetensors", spec.vae.to_dict())
    for name, refine in ((DISTILL_LORA, False), (REFINE_LORA, True)):
        yield (name, Path(LORA_DIR), name, lambda refine=refine: lora_tensors(spec.dit, spec.lora_rank, refine=refine),
               f"{name}.safetensors", None)


def is_written(root: Path, spec: Spec, seed: int) -> bool:
    """Whether `root` is a finished checkpoint of this tool with this spec and seed."""
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return marker.get("format") == FORMAT and marker.get("spec") == spec.to_json() and marker.get("seed") == seed


def write_checkpoint(root: str | Path, spec: Spec, *, seed: int = 0, force: bool = False) -> dict:
    """Writes the checkpoint of `spec` into `root` (see the module docstring); returns what was done: bytes, seconds,
    per part its bytes, and whether the folder was `kept`: a finished folder of the same spec and seed is, unless
    `force`."""
    from longcat_jax.models.text_encoder.tiny_tokenizer import build_tiny_tokenizer

    root = Path(root)
    if not force and is_written(root, spec, seed):
        logger.info("%s holds this checkpoint already (%s); kept", root, MARKER)
        return {**json.loads((root / MARKER).read_text()), "kept": True}
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    parts = [(label, folder, prefix, tensors(), single, config) for label, folder, prefix, tensors, single, config
             in _parts(spec)]
    needed = sum(math.prod(shape) * BF16.itemsize for *_, tensors, _, _ in parts for shape, _ in tensors.values())
    free = shutil.disk_usage(tmp.parent if tmp.parent.exists() else Path.cwd()).free
    if needed > free:
        raise SystemExit(f"{root}: the checkpoint needs {needed / 1e9:.1f} GB and its disk has {free / 1e9:.1f} GB "
                         "free; choose a folder on a larger disk")
    start = time.perf_counter()
    draw = Drawer(seed)
    sizes = {}
    with ThreadPoolExecutor(WRITERS, thread_name_prefix="write-shard") as pool:
        pending: list[Future] = []
        for label, folder, prefix, tensors, single, config in parts:
            part_start = time.perf_counter()
            sizes[label] = write_part(tmp / folder, prefix, tensors, draw, pool, pending, single_name=single)
            if config is not None:
                (tmp / folder / "config.json").write_text(json.dumps(config, indent=2))
            logger.info("%s: %.2f GB drawn in %.1f s", label, sizes[label] / 1e9, time.perf_counter() - part_start)
        for future in pending:
            future.result()
    build_tiny_tokenizer(tmp / TOKENIZER)
    (tmp / SCHEDULER).mkdir()
    (tmp / SCHEDULER / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    seconds = time.perf_counter() - start
    total = sum(sizes.values())
    record = {"format": FORMAT, "spec": spec.to_json(), "seed": seed, "bytes": total, "seconds": round(seconds, 1),
              "parts": sizes}
    (tmp / MARKER).write_text(json.dumps(record, indent=1))
    tmp.rename(root)
    logger.info("wrote %s: %.2f GB in %.1f s (%.2f GB/s)", root, total / 1e9, seconds, total / 1e9 / seconds)
    return {**record, "kept": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="where the checkpoint goes (replaced if it holds another one)")
    parser.add_argument("--small", action="store_true", help="small models for a CPU instead of the released sizes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="write again even if the folder holds this checkpoint")
    args = parser.parse_args(argv)
    setup_cli_logging()
    record = write_checkpoint(args.folder, small_spec() if args.small else released_spec(), seed=args.seed,
                              force=args.force)
    print("RESULT " + json.dumps({k: record[k] for k in ("bytes", "seconds", "parts", "kept")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
