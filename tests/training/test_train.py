"""Training end to end on a small DiT: it overfits one clip, resumes bit-exactly, writes a LoRA that `--lora` loads
(in the original's file format) and that reproduces the trained model; its step on 8 devices (data parallel with
FSDP) equals the one-device step.

One module-level run (`OVERFIT_STEPS` steps) feeds most tests; every run and step here has the same shapes,
model and config, so they share one compiled one-device step.
"""

import functools
import json
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import InputError
from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit import enable_loras, load_lora
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.lora import LoRA, LoRAFactors
from longcat_jax.sharding import bytes_per_device, make_mesh
from longcat_jax.training import loop
from longcat_jax.training.checkpoints import TrainCheckpoints
from longcat_jax.training.loop import run_training, step_spec
from longcat_jax.training.lora_file import lora_file_tensors
from longcat_jax.training.placement import Placement
from longcat_jax.training.remat import rematerialize_blocks
from longcat_jax.training.run_log import METRICS_NAME
from longcat_jax.training.step import train_step
from longcat_jax.training.trainable_lora import attach_trainable_lora, lora_targets, split_trainable
from tests.training.synthetic import batch_of, small_dit, smooth_clip, train_config, write_cache

OVERFIT_STEPS = 40
# Measured on the run below (CPU, jax 0.10.2): the mean loss of the last 5 steps was 0.548 of the first 5's
# (2.747 -> 1.505, falling steadily). Required: below 0.75, leaving room for other CPUs' rounding.
OVERFIT_RATIO = 0.75
BATCH = 8  # the clip eight times, each with its own noise and sigma; also the 8-device test's batch
TRAINING = {"steps": OVERFIT_STEPS, "batch_size": BATCH, "seed": 3, "log_every": 10}
OPTIMIZER = {"learning_rate": 1e-2}
CHECKPOINT = {"every": OVERFIT_STEPS // 2, "keep": 3}


def _config(tmp_path):
    return train_config(tmp_path, training=TRAINING, optimizer=OPTIMIZER, checkpoint=CHECKPOINT)


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """(config, result, trained DiT) of one uninterrupted run on one clip."""
    tmp_path = tmp_path_factory.mktemp("overfit")
    config = _config(tmp_path)
    write_cache(config, {"clip.mp4": smooth_clip(0)})
    dit = small_dit()
    return config, run_training(config, dit=dit), dit


def test_the_small_model_overfits_one_clip(overfit):
    _, result, _ = overfit
    losses = np.asarray(result.losses)
    assert len(losses) == OVERFIT_STEPS and np.all(np.isfinite(losses))
    assert losses[-5:].mean() < OVERFIT_RATIO * losses[:5].mean(), losses


def test_resume_repeats_the_uninterrupted_run_exactly(overfit, tmp_path, monkeypatch):
    # Stopped twice: by --until-step, then by Ctrl-C during a step (which finishes it and checkpoints).
    _, full, _ = overfit
    config = _config(tmp_path)
    write_cache(config, {"clip.mp4": smooth_clip(0)})
    with pytest.raises(InputError, match="nothing to resume"):
        run_training(config, resume=True, dit=small_dit())
    first = run_training(config, dit=small_dit(), until_step=10)
    assert first.lora_path is None and first.final_step == 10
    with pytest.raises(InputError, match="--resume"):
        run_training(config, dit=small_dit())

    calls = []

    def interrupted_at_step_25(*args):
        calls.append(1)
        if len(calls) == 15:
            signal.raise_signal(signal.SIGINT)
        return train_step(*args)

    monkeypatch.setattr(loop, "train_step", interrupted_at_step_25)
    with pytest.raises(KeyboardInterrupt):
        run_training(config, resume=True, dit=small_dit())
    monkeypatch.undo()
    assert TrainCheckpoints.peek_latest_step(config.output_dir) == 25
    third = run_training(config, resume=True, dit=small_dit())

    assert third.start_step == 25 and third.final_step == OVERFIT_STEPS
    rows = (config.output_dir / METRICS_NAME).read_text().splitlines()
    losses = [float(row.split(",")[1]) for row in rows[1:]]
    assert losses == full.losses  # bit for bit, every step once
    resumed, uninterrupted = SafetensorsCheckpoint(third.lora_path), SafetensorsCheckpoint(full.lora_path)
    for name in uninterrupted.names():
        np.testing.assert_array_equal(resumed.read(name), uninterrupted.read(name))


@functools.partial(jax.jit, static_argnums=0)
def _jitted_forward(graphdef, state, latents, text, mask):
    return nnx.merge(graphdef, state)(latents, jnp.array([600.0]), text, mask)


def _forward(model, seed=5):
    rng = np.random.default_rng(seed)
    latents = jnp.asarray(rng.standard_normal((1, 16, 2, 8, 8)), jnp.float32)
    text = jnp.asarray(rng.standard_normal((1, 1, 64, model.config.caption_channels)), jnp.float32)
    mask = jnp.asarray((np.arange(64) < 7)[None], jnp.int32)
    return np.asarray(_jitted_forward(*nnx.split(model), latents, text, mask))


def test_the_saved_lora_loads_like_a_released_one_and_reproduces_the_trained_model(overfit):
    config, result, trained = overfit
    assert result.lora_path.name == "lora.safetensors"
    assert (config.output_dir / "lora" / f"step_{OVERFIT_STEPS:06d}.safetensors").is_file()
    assert not (config.output_dir / "samples").exists()  # sample videos are off by default
    lora = load_lora(result.lora_path)  # what `--lora PATH` does
    assert len(lora.modules) == 9 and all(f.alpha_scale == 1.0 for f in lora.modules.values())
    base = small_dit()
    enable_loras(base, [lora.with_multiplier(0.0)])  # the plain model's output (same compiled forward)
    before = _forward(base)
    enable_loras(base, [lora])
    after = _forward(base)
    assert rel_l2(after, before) > 1e-3  # the LoRA changes the output
    assert rel_l2(after, _forward(trained)) < 1e-6  # and it is the trained model


def test_the_lora_file_has_the_original_names_and_shapes(fixtures_dir):
    original = SafetensorsCheckpoint(fixtures_dir / "lora_rank8.safetensors")
    dit_config = DiTConfig.from_dict(json.loads((fixtures_dir / "dit" / "config.json").read_text()))
    targets = lora_targets(dit_config, ("attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear",
                                        "cross_attn.proj", "ffn.w1", "ffn.w2", "ffn.w3", "adaLN_modulation.1"))
    rng = np.random.default_rng(0)
    factors = {}
    for target in targets:  # every shape read from the fixture file (a second fixture set has other sizes)
        rank, in_features = original.shape(_name(target.original_name, "lora_down.weight"))
        out_features = original.shape(_name(target.original_name, "lora_up.weight"))[0]
        factors[target.path] = LoRAFactors(rng.standard_normal((in_features, rank)).astype(np.float32),
                                           rng.standard_normal((rank, out_features)).astype(np.float32), 0.5)
    ours = lora_file_tensors(LoRA("ours", factors), targets)
    assert sorted(ours) == sorted(original.names())
    for name, array in ours.items():
        assert array.shape == original.shape(name), name


def _name(original_module: str, suffix: str) -> str:
    return "lora___lorahyphen___" + original_module.replace(".", "___lorahyphen___") + "." + suffix


def test_base_weights_stay_frozen(overfit):
    _, _, trained = overfit
    trained_params, reference_params = nnx.state(trained, nnx.Param), nnx.state(small_dit(), nnx.Param)
    assert len(jax.tree.leaves(trained_params)) == len(jax.tree.leaves(reference_params))
    for got, want in zip(jax.tree.leaves(trained_params), jax.tree.leaves(reference_params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (conftest asks XLA for 8 CPU devices)")
def test_the_data_parallel_fsdp_step_equals_the_one_device_step(overfit):
    # Eight different clips split over 8 devices, the frozen weights stored split over them too (FSDP).
    config, _, _ = overfit
    batch = batch_of([smooth_clip(seed) for seed in range(BATCH)])
    results = {}
    for name, placement in (("one device", Placement()), ("fsdp", Placement(make_mesh(8), fsdp=True))):
        model = small_dit()
        attach_trainable_lora(model, config.lora, seed=config.training.seed)
        rematerialize_blocks(model)
        graphdef, factors, frozen = split_trainable(model)
        factors, frozen = placement.replicated(factors), placement.frozen(frozen)
        if name == "fsdp":  # each device stores a fraction of the frozen weights
            whole = sum(leaf.nbytes for leaf in jax.tree.leaves(frozen))
            assert max(bytes_per_device(nnx.merge(graphdef, factors, frozen)).values()) < 0.5 * whole
        spec = step_spec(config, 0)
        opt_state = placement.replicated(spec.make_optimizer().init(factors))
        factors, _, metrics = train_step(graphdef, spec, factors, opt_state, frozen, placement.batch(batch),
                                         jax.random.key(9))
        results[name] = (float(metrics["loss"]), float(metrics["grad_norm"]), jax.tree.leaves(factors))
    (loss, grad_norm, factors), (loss_one, grad_norm_one, factors_one) = results["fsdp"], results["one device"]
    assert loss == pytest.approx(loss_one, rel=1e-5) and grad_norm == pytest.approx(grad_norm_one, rel=1e-5)
    # Adam's first step is about lr * sign(gradient): near-zero gradient entries, summed in another order over
    # the devices, may flip sign, so the factors agree a little less tightly than loss and gradient norm.
    for got, want in zip(factors, factors_one):
        assert rel_l2(got, want) < 1e-4
