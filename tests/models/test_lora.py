"""LoRA in the original LongCat format: run time and merged, several at once, split up-factors, refusals."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError
from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit import disable_loras, enable_loras, load_dit, load_lora, merge_loras
from longcat_jax.models.dit.lora_params import lora_tensors
from tests.helpers.dit_checkpoints import write_safetensors

forward = nnx.jit(lambda model, *args: model(*args))
PREFIX = "lora___lorahyphen___"
HYPHEN = "___lorahyphen___"


@pytest.fixture(scope="module")
def setup(fixtures_dir):
    cases = SafetensorsCheckpoint(fixtures_dir / "dit_cases.safetensors")
    args = [jnp.asarray(cases.read(f"t2v.{n}")) for n in
            ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask")]
    expected = {"t2v": cases.read("t2v.out"), "lora": cases.read("lora.out")}
    return args, expected


@pytest.fixture
def model(fixtures_dir):
    return load_dit(fixtures_dir / "dit", dtype=jnp.float32)


@pytest.fixture(scope="module")
def lora(fixtures_dir):
    return load_lora(fixtures_dir / "lora_rank8.safetensors")


def test_run_time_lora_matches_original_and_disables(model, lora, setup):
    args, expected = setup
    assert len(lora.modules) == 18  # every Linear of both blocks
    enable_loras(model, [lora])
    assert rel_l2(forward(model, *args), expected["lora"]) < 1e-4
    disable_loras(model)
    assert rel_l2(forward(model, *args), expected["t2v"]) < 1e-4


def test_merged_lora_matches_run_time(model, lora, setup):
    args, expected = setup
    merge_loras(model, [lora])
    assert rel_l2(forward(model, *args), expected["lora"]) < 1e-4


def test_several_loras_with_multipliers(fixtures_dir, model, lora, setup):
    args, expected = setup
    enable_loras(model, [lora.with_multiplier(0.25), lora.with_multiplier(0.75)])
    assert rel_l2(forward(model, *args), expected["lora"]) < 1e-5
    enable_loras(model, [lora.with_multiplier(0.4)])
    run_time = forward(model, *args)
    assert rel_l2(run_time, expected["lora"]) > 1e-3  # the multiplier matters
    merged = load_dit(fixtures_dir / "dit", dtype=jnp.float32)
    merge_loras(merged, [lora.with_multiplier(0.1), lora.with_multiplier(0.3)])
    assert rel_l2(forward(merged, *args), run_time) < 1e-5


def test_bfloat16_lora_run_time_and_merged(fixtures_dir, lora, setup):
    args, expected = setup
    model = load_dit(fixtures_dir / "dit", dtype=jnp.bfloat16)
    enable_loras(model, [lora])
    assert model.blocks[0].attn.qkv.loras[0].down_kernel.get_value().dtype == jnp.bfloat16
    assert rel_l2(forward(model, *args), expected["lora"]) < 2e-2
    disable_loras(model)
    merge_loras(model, [lora])
    assert model.blocks[0].attn.qkv.kernel.get_value().dtype == jnp.bfloat16
    assert rel_l2(forward(model, *args), expected["lora"]) < 2e-2


def _lora_name(module: str) -> str:
    return PREFIX + module.replace(".", HYPHEN)


def test_split_up_factor_equals_its_block_diagonal_form(tmp_path):
    """`lora_up.blocks.N.weight` (one up matrix per part of a fused Linear) computes the same update as
    one block-diagonal up matrix."""
    rng = np.random.default_rng(0)
    rank, parts, hidden = 2, 3, 256
    down = rng.standard_normal((parts * rank, hidden), dtype=np.float32)
    ups = [rng.standard_normal((hidden, rank), dtype=np.float32) for _ in range(parts)]
    name = _lora_name("blocks.0.attn.qkv")
    split = {f"{name}.lora_down.weight": down, f"{name}.alpha_scale": np.asarray(0.5, np.float32)}
    split.update({f"{name}.lora_up.blocks.{i}.weight": up for i, up in enumerate(ups)})
    write_safetensors(tmp_path / "split.safetensors", split)
    factors = load_lora(tmp_path / "split.safetensors").modules[("blocks", 0, "attn", "qkv")]
    x = rng.standard_normal((5, hidden), dtype=np.float32)
    low = x @ down.T
    want = np.concatenate([low[:, i * rank:(i + 1) * rank] @ ups[i].T for i in range(parts)], axis=1)
    np.testing.assert_allclose(x @ factors.down @ factors.up, want, rtol=1e-5, atol=1e-4)
    assert factors.alpha_scale == 0.5


def _single(tmp_path, module: str, down_shape=(8, 256), up_shape=(768, 8), alpha=True):
    name = _lora_name(module)
    tensors = {f"{name}.lora_down.weight": np.zeros(down_shape, ml_dtypes.bfloat16),
               f"{name}.lora_up.weight": np.zeros(up_shape, ml_dtypes.bfloat16)}
    if alpha:
        tensors[f"{name}.alpha_scale"] = np.asarray(1.0, np.float32)
    path = tmp_path / "one.safetensors"
    write_safetensors(path, tensors)
    return path


def test_refusals(tmp_path, model):
    with pytest.raises(CheckpointError, match="not a Linear"):
        load_lora(_single(tmp_path, "blocks.0.attn.q_norm"))
    with pytest.raises(CheckpointError, match="lacks"):
        load_lora(_single(tmp_path, "blocks.0.attn.qkv", alpha=False))
    with pytest.raises(CheckpointError, match="lacks this DiT|which this DiT lacks"):
        enable_loras(model, [load_lora(_single(tmp_path, "blocks.7.attn.qkv"))])
    with pytest.raises(CheckpointError, match=f"which this DiT of depth {model.config.depth} lacks"):  # converting
        list(lora_tensors(SafetensorsCheckpoint(_single(tmp_path, "blocks.7.attn.qkv")), model.config))
    with pytest.raises(CheckpointError, match="features"):
        merge_loras(model, [load_lora(_single(tmp_path, "blocks.0.attn.qkv", up_shape=(512, 8)))])
    write_safetensors(tmp_path / "odd.safetensors", {"something.weight": np.zeros((2,), np.float32)})
    with pytest.raises(CheckpointError, match="not a LongCat LoRA"):
        load_lora(tmp_path / "odd.safetensors")


def test_folder_of_several_loras_is_refused_by_name(fixtures_dir, tmp_path):
    folder = tmp_path / "lora"
    folder.mkdir()
    for name in ("cfg_step_lora.safetensors", "refinement_lora.safetensors"):
        (folder / name).write_bytes((fixtures_dir / "lora_rank8.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"several LoRA files \['cfg_step_lora.safetensors', "
                                              r"'refinement_lora.safetensors'\]; pass the path of one"):
        load_lora(folder)
    (folder / "refinement_lora.safetensors").unlink()
    assert len(load_lora(folder).modules) == 18  # a folder with one LoRA file still loads
