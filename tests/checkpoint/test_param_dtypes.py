"""An integer tensor where a model has a float parameter is refused from the headers, before any tensor is
read or written, by every name map (DiT, VAE, text encoder, LoRA) and, as a last guard, by `fill_model`."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from convert.api import convert_checkpoint
from longcat_jax.checkpoint.param_tree import fill_model
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError
from longcat_jax.models.dit import load_dit, load_lora
from longcat_jax.models.text_encoder.loading import load_text_encoder
from longcat_jax.models.vae import load_vae
from tests.helpers.dit_checkpoints import dit_config, write_original_dit, write_safetensors, write_sharded

SMALL = dit_config(hidden_size=64, depth=2, num_heads=2)


def _as_int16(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, np.float32).astype(np.int16)


def test_dit_with_an_integer_tensor_is_refused_before_anything_is_written(tmp_path):
    """The tensor sorts late, so a check made while streaming would come after other tensors were written."""
    tensors = write_original_dit(tmp_path / "src" / "dit", SMALL)
    late = "y_embedder.y_proj.2.weight"
    tensors[late] = _as_int16(tensors[late])
    for file in (tmp_path / "src" / "dit").glob("*.safetensors*"):
        file.unlink()
    write_sharded(tmp_path / "src" / "dit", tensors, 2)
    with pytest.raises(CheckpointError, match=f"{late}.*I16.*float"):
        load_dit(tmp_path / "src" / "dit", dtype=jnp.float32)
    with pytest.raises(CheckpointError, match=f"{late}.*I16.*float"):
        convert_checkpoint(tmp_path / "src", tmp_path / "dst", allow_incomplete=True)
    assert not (tmp_path / "dst").exists()


def test_vae_with_an_integer_tensor_is_refused(fixtures_dir, tmp_path):
    tensors = load_file(str(fixtures_dir / "vae" / "diffusion_pytorch_model.safetensors"))
    name = "decoder.conv_out.bias"
    tensors[name] = _as_int16(np.zeros(tensors[name].shape))
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text((fixtures_dir / "vae" / "config.json").read_text())
    save_file(tensors, str(tmp_path / "vae" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match=f"{name}.*I16.*float"):
        load_vae(tmp_path / "vae")


def test_text_encoder_with_an_integer_tensor_is_refused(fixtures_dir, tmp_path):
    tensors = load_file(str(fixtures_dir / "text_encoder" / "model.safetensors"))
    name = "encoder.final_layer_norm.weight"
    tensors[name] = _as_int16(tensors[name])
    (tmp_path / "te").mkdir()
    (tmp_path / "te" / "config.json").write_text((fixtures_dir / "text_encoder" / "config.json").read_text())
    save_file(tensors, str(tmp_path / "te" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"{name}.*I16.*float"):
        load_text_encoder(tmp_path / "te", dtype=jnp.float32)


def test_lora_with_an_integer_factor_is_refused(tmp_path):
    name = "lora___lorahyphen___blocks___lorahyphen___0___lorahyphen___attn___lorahyphen___qkv"
    write_safetensors(tmp_path / "l.safetensors", {
        f"{name}.lora_down.weight": np.zeros((8, 64), np.int16),
        f"{name}.lora_up.weight": np.zeros((192, 8), np.float32),
        f"{name}.alpha_scale": np.asarray(1.0, np.float32),
    })
    with pytest.raises(CheckpointError, match="lora_down.weight.*I16.*float"):
        load_lora(tmp_path / "l.safetensors")


def test_fill_model_refuses_an_integer_array_for_a_float_parameter():
    with pytest.raises(CheckpointError, match="kernel.*int16.*float"):
        fill_model(lambda: nnx.Linear(2, 3, use_bias=False, rngs=nnx.Rngs(0)),
                   [(("kernel",), np.ones((2, 3), np.int16))], source="test")


def test_float_dtypes_stay_accepted(tmp_path):
    """bf16 (the released DiT), float16 and float32 all load."""
    tensors = write_original_dit(tmp_path / "dit", SMALL)
    for file in (tmp_path / "dit").glob("*.safetensors*"):
        file.unlink()
    mixed = {n: (a.astype(np.float16) if i % 3 == 1 else a.astype(np.float32) if i % 3 == 2 else a)
             for i, (n, a) in enumerate(tensors.items())}
    write_sharded(tmp_path / "dit", mixed, 2)
    assert {str(SafetensorsCheckpoint(tmp_path / "dit").dtype(n)) for n in mixed} == {"bfloat16", "float16", "float32"}
    assert load_dit(tmp_path / "dit", dtype=jnp.float32).config.depth == SMALL["depth"]
