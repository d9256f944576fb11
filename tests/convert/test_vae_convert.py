"""The VAE converter: original diffusers names -> our tree, strict about keys and shapes, and the loaders."""

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from longcat_jax.checkpoint.orbax_chunks import save_part
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError
from longcat_jax.models.vae import VAEConfig, load_vae
from longcat_jax.models.vae.params import vae_tensors


@pytest.fixture(scope="module")
def original(fixtures_dir):
    ckpt = SafetensorsCheckpoint(fixtures_dir / "vae")
    return {name: np.asarray(ckpt.read(name), np.float32) for name in ckpt.names()}


@pytest.fixture(scope="module")
def config(fixtures_dir):
    return VAEConfig.from_json(fixtures_dir / "vae" / "config.json")


def _convert(tmp_path, tensors, config):
    save_file(tensors, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    return dict(vae_tensors(SafetensorsCheckpoint(tmp_path), config))


def test_layouts(tmp_path, original, config):
    converted = _convert(tmp_path, original, config)
    conv3d = original["encoder.conv_in.weight"]  # torch [O, I, D, H, W]
    np.testing.assert_array_equal(converted[("encoder", "conv_in", "conv", "kernel")], conv3d.transpose(2, 3, 4, 1, 0))
    conv2d = original["encoder.down_blocks.1.resample.1.weight"]  # torch [O, I, H, W]
    np.testing.assert_array_equal(converted[("encoder", "layers", 1, "spatial_conv", "kernel")], conv2d.transpose(2, 3, 1, 0))
    qkv = original["decoder.mid_block.attentions.0.to_qkv.weight"]  # 1x1 conv [3C, C, 1, 1] -> Linear [C, 3C]
    np.testing.assert_array_equal(converted[("decoder", "mid", "attention", "qkv", "kernel")], qkv[:, :, 0, 0].T)
    gamma = original["decoder.norm_out.gamma"]  # [C, 1, 1, 1]
    np.testing.assert_array_equal(converted[("decoder", "norm_out", "scale")], gamma.reshape(-1))


def test_unmapped_key_is_refused(tmp_path, original, config):
    extra = {**original, "decoder.extra_head.weight": np.zeros((3, 3), np.float32)}
    with pytest.raises(CheckpointError, match="decoder.extra_head.weight"):
        _convert(tmp_path, extra, config)


def test_missing_key_is_refused(tmp_path, original, config):
    partial = {k: v for k, v in original.items() if k != "decoder.conv_out.bias"}
    with pytest.raises(CheckpointError, match="missing.*decoder.conv_out.bias"):
        _convert(tmp_path, partial, config)


def test_wrong_shape_is_refused(tmp_path, original, config):
    wrong = {**original, "encoder.conv_in.weight": original["encoder.conv_in.weight"][:, :, :2]}
    with pytest.raises(CheckpointError, match=r"encoder.conv_in.weight has shape \(16, 3, 2, 3, 3\)"):
        _convert(tmp_path, wrong, config)


def test_load_vae_needs_a_config(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_vae(tmp_path)


def test_converted_folder_loads_the_same_weights(tmp_path, fixtures_dir, config):
    converted = tmp_path / "vae"
    save_part(vae_tensors(SafetensorsCheckpoint(fixtures_dir / "vae"), config), converted, config.to_dict())
    from_converted = nnx.state(load_vae(converted))
    from_original = nnx.state(load_vae(fixtures_dir / "vae"))
    jax.tree.map(np.testing.assert_array_equal, from_converted, from_original)
