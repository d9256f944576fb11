"""Training a float32 LoRA on a frozen base quantized to INT8 or FP8 (`quantize` in the config): the quantized Linear
passes the input's gradient straight through, the LoRA gradients stay close to those on the unquantized base, a
few steps reduce the loss, the base's quantized weights do not move, and a checkpoint refuses another `quantize`."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longcat_jax.errors import CheckpointError
from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit import load_lora
from longcat_jax.models.dit.layers import Linear
from longcat_jax.models.dit.loading import random_dit
from longcat_jax.models.dit.quantized_linear import QuantizedLinear, quantize_linears
from longcat_jax.quantization import SCHEMES
from longcat_jax.training.config import LoRAConfig, OptimizerConfig
from longcat_jax.training.loop import run_training
from longcat_jax.training.objective import SigmaSampling
from longcat_jax.training.run_log import METRICS_NAME
from longcat_jax.training.step import StepSpec, micro_batch_loss
from longcat_jax.training.trainable_lora import attach_trainable_lora, split_trainable
from tests.training.synthetic import batch_of, small_dit, small_dit_config, smooth_clip, train_config, write_cache

SPEC = StepSpec(OptimizerConfig(), steps=10, sigma=SigmaSampling("uniform"), num_cond_latents=0)

# Relative L2 of the LoRA gradients (all factors together) on a quantized bf16 base against the bf16 base, on the
# model below; measured (CPU, jax 0.10.2, commit 9c7d954): int8 1.19e-2, fp8 5.65e-2 (fp8-weight-only 4.12e-2: the same weights,
# bf16 math). Allowed: about 2x.
GRAD_TOLERANCE = {"int8": 2.5e-2, "fp8": 1.1e-1}


@pytest.mark.parametrize("mode", ["fp8", "int8", "fp8-weight-only"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_the_input_gradient_of_a_quantized_linear_is_that_of_its_dequantized_weight(mode, dtype):
    # Straight through: d(x W_q)/dx with W_q the dequantized weight, in the activation dtype. Differentiating the FP8
    # GEMM itself would round the gradient to e4m3 (here: 2x the gradient's size in error).
    linear = Linear(64, 32, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=dtype)
    quantized = QuantizedLinear.from_linear(linear, SCHEMES[mode])
    x = jnp.asarray(np.random.default_rng(1).standard_normal((5, 64)), dtype)
    cotangent = jnp.asarray(np.random.default_rng(2).standard_normal((5, 32)) * 1e-4, jnp.float32)
    got = jax.grad(lambda x: jnp.sum(quantized(x).astype(jnp.float32) * cotangent))(x)
    want = cotangent @ quantized.dequantized_kernel().T
    assert got.dtype == dtype
    assert rel_l2(got.astype(jnp.float32), want) < (1e-6 if dtype == jnp.float32 else 1e-2)


def _lora_gradients(mode: str):
    """LoRA gradients of one micro-batch on a bf16 small DiT whose block Linears are quantized with `mode`."""
    dit = quantize_linears(random_dit(small_dit_config(), dtype=jnp.bfloat16), mode)
    attach_trainable_lora(dit, LoRAConfig(rank=4, alpha=4, targets=("all",)), seed=1)
    graphdef, factors, frozen = split_trainable(dit)
    keys = iter(jax.random.split(jax.random.key(2), 64))  # nonzero up factors, as after some training
    factors = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), factors)
    micro = {k: jnp.asarray(v[0]) for k, v in dataclasses.asdict(batch_of([smooth_clip(0)])).items()}
    loss = lambda f: micro_batch_loss(nnx.merge(graphdef, f, frozen), micro, jax.random.key(4), SPEC)  # noqa: E731
    return jax.jit(jax.grad(loss))(factors)


@pytest.fixture(scope="module")
def bf16_base_gradients():
    return _lora_gradients("none")


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_lora_gradients_on_a_quantized_base_are_close_to_those_on_the_bf16_base(mode, bf16_base_gradients):
    got = _lora_gradients(mode)
    assert jax.tree.structure(got) == jax.tree.structure(bf16_base_gradients)
    leaves = jax.tree.leaves(got)
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves)
    flat = np.concatenate([np.asarray(leaf).ravel() for leaf in leaves])
    want = np.concatenate([np.asarray(leaf).ravel() for leaf in jax.tree.leaves(bf16_base_gradients)])
    assert float(np.abs(want).max()) > 0
    assert rel_l2(flat, want) < GRAD_TOLERANCE[mode], rel_l2(flat, want)


STEPS = 8
# The flow-matching loss of the trained model over that of the base (the LoRA's up factors zero, as at the start), on
# 8 fixed draws of noise and sigma for the clip, after STEPS steps; measured (CPU, jax 0.10.2): int8 0.662, fp8 0.662
# (the bf16 base, same run: 0.663). Required: below 0.8.
LOSS_RATIO = 0.8


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_a_few_steps_on_a_quantized_base_reduce_the_loss_with_finite_gradients(mode, tmp_path):
    config = train_config(tmp_path, dtype="bfloat16", quantize=mode, lora={"rank": 4, "alpha": 4, "targets": ["all"]},
                          training={"steps": STEPS, "batch_size": 4, "seed": 3, "log_every": 4},
                          optimizer={"learning_rate": 3e-2}, checkpoint={"every": STEPS})
    write_cache(config, {"clip.mp4": smooth_clip(0)})
    dit = random_dit(small_dit_config(), dtype=jnp.bfloat16)
    result = run_training(config, dit=dit)
    assert np.all(np.isfinite(result.losses))
    assert len(load_lora(result.lora_path).modules) == 9  # written as on a bf16 base, loadable with --lora
    rows = (config.output_dir / METRICS_NAME).read_text().splitlines()[1:]
    grad_norms = np.asarray([float(row.split(",")[3]) for row in rows])
    assert len(grad_norms) == STEPS and np.all(np.isfinite(grad_norms)) and np.all(grad_norms > 0)

    graphdef, factors, frozen = split_trainable(dit)
    untrained = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x) if "up_kernel" in jax.tree_util.keystr(path) else x, factors)
    micro = {k: jnp.asarray(v[0]) for k, v in dataclasses.asdict(batch_of([smooth_clip(0)] * 8)).items()}
    loss = jax.jit(lambda f: micro_batch_loss(nnx.merge(graphdef, f, frozen), micro, jax.random.key(11), SPEC))
    assert float(loss(factors)) < LOSS_RATIO * float(loss(untrained))

    # The base stays as quantized: every block Linear a QuantizedLinear carrying the LoRA, its weights unchanged.
    reference = quantize_linears(random_dit(small_dit_config(), dtype=jnp.bfloat16), mode)
    quantized = [m for _, m in nnx.iter_modules(dit) if isinstance(m, QuantizedLinear)]
    assert len(quantized) == 8 and all(len(m.loras) == 1 for m in quantized)
    for got, want in zip(jax.tree.leaves(nnx.state(dit, nnx.Param)), jax.tree.leaves(nnx.state(reference, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    other = dataclasses.replace(config, quantize="none",
                                training=dataclasses.replace(config.training, steps=STEPS + 2))
    with pytest.raises(CheckpointError, match=f"quantize='{mode}'.*'none'"):
        run_training(other, resume=True, dit=small_dit())
