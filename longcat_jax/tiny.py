"""The small built-in model: LongCat's architectures at toy sizes with random weights from a fixed seed.

`python -m longcat_jax.generate` without `--model-path` runs on it, so a new user sees the whole path (prompt ->
UMT5 -> DiT sampling -> VAE -> mp4) work on a CPU in well under a minute, and the tests and examples exercise
every task without a download. The videos it makes are noise-like: the weights are random, which is logged
loudly. The tokenizer is a real sentencepiece model trained at run time on a built-in text; the LoRAs standing in
for `cfg_step_lora` and `refinement_lora` are random low-rank updates, so `--distill` and `--refine` run too.

`random_dit` is also what the benchmarks use to build the real 13.6B DiT size without a checkpoint: every
parameter is drawn on the target device, never on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from convert.dit import expected_parameters
from convert.param_tree import abstract_model, fill_model
from kernels import BSAParams
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.lora import LoRA, LoRAFactors
from longcat_jax.models.dit.transformer import LongCatDiT
from longcat_jax.models.text_encoder.config import UMT5Config
from longcat_jax.models.text_encoder.loading import random_text_encoder
from longcat_jax.models.text_encoder.tiny_tokenizer import build_tiny_tokenizer
from longcat_jax.models.vae import VAEConfig, random_vae

logger = logging.getLogger(__name__)

TINY_SEED = 0
TINY_LORA_RANK = 4
RANDOM_WEIGHTS_WARNING = (
    "Using the built-in TINY model with RANDOM weights (seed %d): the video will be noise, not your prompt. "
    "Pass --model-path to a LongCat-Video checkpoint for real results."
)

TINY_TEXT_CONFIG = UMT5Config(vocab_size=192, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2)
TINY_VAE_CONFIG = VAEConfig(base_dim=8, z_dim=16, dim_mult=(1, 2, 2, 2), num_res_blocks=1)
TINY_DIT_CONFIG = DiTConfig(
    in_channels=16,
    out_channels=16,
    hidden_size=64,
    depth=2,
    num_heads=2,
    caption_channels=TINY_TEXT_CONFIG.d_model,
    adaln_tembed_dim=32,
    frequency_embedding_size=64,
    enable_bsa=False,
    bsa_params=BSAParams(sparsity=0.75),
    text_tokens_zero_pad=True,
)


def random_dit(
    config: DiTConfig,
    *,
    seed: int = TINY_SEED,
    dtype=jnp.float32,
    param_dtype=None,
    draw_on_device: bool = False,
    device: jax.Device | None = None,
) -> LongCatDiT:
    """A `LongCatDiT` with random weights: kernels ~ N(0, 1/fan_in) so activations keep their scale through the
    blocks, biases 0, norm scales 1; the same seed gives the same weights.

    `draw_on_device=False` draws on the host with numpy (instant for small models: no compilation);
    `draw_on_device=True` draws each parameter on `device` with `jax.random` (one compilation per distinct shape),
    so the real 13.6B size builds on a GPU in seconds without passing 27 GB through host memory.
    `device` defaults to this process's first local device (in a multi-host run `jax.devices()[0]` belongs to
    process 0).
    """
    param_dtype = dtype if param_dtype is None else param_dtype
    device = device or jax.local_devices()[0]

    def make() -> LongCatDiT:
        return LongCatDiT(config, rngs=nnx.Rngs(seed), dtype=dtype, param_dtype=param_dtype)

    graphdef, state, shapes = abstract_model(make)
    if draw_on_device:
        # fill_model would pass every array through numpy (the host); set the device arrays directly instead.
        key = jax.random.key(seed)
        flat = nnx.to_flat_state(state)
        with jax.default_device(device):
            for index, (path, variable) in enumerate(flat):
                leaf = shapes[tuple(path)]
                variable.set_value(
                    _device_leaf(jax.random.fold_in(key, index), tuple(leaf.shape), jnp.dtype(leaf.dtype).name, path[-1])
                )
        return nnx.merge(graphdef, nnx.from_flat_state(flat))
    rng = np.random.default_rng(seed)
    tensors = ((path, _host_leaf(rng, tuple(leaf.shape), path[-1])) for path, leaf in shapes.items())
    return fill_model(make, tensors, source=f"random DiT weights (seed {seed})", dtype=param_dtype, device=device)


def _host_leaf(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    if kind == "kernel":
        return rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(np.prod(shape[:-1])))
    return (np.ones if kind == "scale" else np.zeros)(shape, np.float32)


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "kind"))
def _device_leaf(key: jax.Array, shape: tuple[int, ...], dtype: str, kind: str) -> jax.Array:
    if kind == "kernel":
        draw = jax.random.normal(key, shape, jnp.float32) / np.sqrt(np.prod(shape[:-1]))
        return draw.astype(dtype)
    return (jnp.ones if kind == "scale" else jnp.zeros)(shape, dtype)


def random_lora(config: DiTConfig, name: str, *, seed: int, rank: int = TINY_LORA_RANK, strength: float = 0.1) -> LoRA:
    """A LoRA on every Linear of the DiT's blocks with random factors, standing in for a released LoRA file.

    The update of each Linear is about `strength` times the size of its random weight, enough to change the
    output visibly (tests can tell it is applied) without destroying it.
    """
    rng = np.random.default_rng(seed)
    modules = {}
    for path, shape in expected_parameters(config).items():
        if path[0] != "blocks" or path[-1] != "kernel" or len(shape) != 2:
            continue
        in_features, out_features = shape
        down = rng.standard_normal((in_features, rank)).astype(np.float32) / np.sqrt(in_features)
        up = rng.standard_normal((rank, out_features)).astype(np.float32) * strength / np.sqrt(rank)
        modules[tuple(path[:-1])] = LoRAFactors(down=down, up=up, alpha_scale=1.0)
    return LoRA(name, modules)


@dataclasses.dataclass
class TinyModels:
    """Everything `LongCatPipeline` needs, at toy sizes."""

    dit: LongCatDiT
    vae: object
    text_encoder: object
    tokenizer: object
    loras: dict[str, LoRA]


def build_tiny_models(*, dtype=jnp.float32, seed: int = TINY_SEED) -> TinyModels:
    """The built-in model: tiny DiT, VAE and UMT5 with random weights from `seed`, a tokenizer trained now."""
    logger.warning(RANDOM_WEIGHTS_WARNING, seed)
    with tempfile.TemporaryDirectory(prefix="longcat_tiny_tokenizer_") as folder:
        # The sentencepiece model is read into memory; the folder is not needed afterwards.
        tokenizer = build_tiny_tokenizer(folder, vocab_size=TINY_TEXT_CONFIG.vocab_size)
    return TinyModels(
        dit=random_dit(TINY_DIT_CONFIG, seed=seed, dtype=dtype),
        vae=random_vae(TINY_VAE_CONFIG, seed=seed + 1, dtype=jnp.float32),
        text_encoder=random_text_encoder(TINY_TEXT_CONFIG, seed=seed + 2, dtype=jnp.float32),
        tokenizer=tokenizer,
        loras={
            "cfg_step_lora": random_lora(TINY_DIT_CONFIG, "cfg_step_lora", seed=seed + 3),
            "refinement_lora": random_lora(TINY_DIT_CONFIG, "refinement_lora", seed=seed + 4),
        },
    )
