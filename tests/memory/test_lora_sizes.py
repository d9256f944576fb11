"""A LoRA's device bytes as the plan counts them: what `load_lora` makes of the file (split up factors loaded as one
block-diagonal matrix), read from the header alone, for an original file and a converted folder; and the plan of a
run counts the larger of the checkpoint's two LoRAs, which no stage runs together."""

import numpy as np
from safetensors.numpy import save_file

from longcat_jax.checkpoint.orbax_chunks import save_part
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.memory.lora_sizes import lora_device_bytes, lora_elements
from longcat_jax.memory.run import checkpoint_models
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.lora import load_lora
from longcat_jax.models.dit.lora_params import lora_tensors
from longcat_jax.training.lora_file import original_lora_name

CONFIG = DiTConfig(hidden_size=64, depth=2, num_heads=2, caption_channels=32, adaln_tembed_dim=32,
                   frequency_embedding_size=64)
RANK = 4
# (module, parts of its up factor, in, out): fused Linears stored in parts, as the released LoRAs store them.
LINEARS = [("blocks.0.attn.qkv", 3, 64, 192), ("blocks.1.adaLN_modulation.1", 6, 32, 384),
           ("blocks.0.ffn.w2", 1, CONFIG.ffn_hidden_size, 64), ("final_layer.adaLN_modulation.1", 2, 32, 128)]


def _write_lora(path, linears) -> None:
    rng = np.random.default_rng(0)
    tensors = {}
    for module, parts, in_features, out_features in linears:
        name = original_lora_name(module)
        tensors[f"{name}.lora_down.weight"] = rng.standard_normal((parts * RANK, in_features), dtype=np.float32)
        if parts == 1:
            tensors[f"{name}.lora_up.weight"] = rng.standard_normal((out_features, RANK), dtype=np.float32)
        for part in range(parts if parts > 1 else 0):
            tensors[f"{name}.lora_up.blocks.{part}.weight"] = rng.standard_normal((out_features // parts, RANK),
                                                                                  dtype=np.float32)
        tensors[f"{name}.alpha_scale"] = np.asarray(0.5, np.float32)
    save_file(tensors, str(path))


def _loaded_elements(path) -> int:
    return sum(f.down.size + f.up.size for f in load_lora(path).modules.values())


def test_the_header_gives_the_loaded_size_of_split_factors(tmp_path):
    path = tmp_path / "lora.safetensors"
    _write_lora(path, LINEARS)
    stored = sum(np.prod(SafetensorsCheckpoint(path).shape(n)) for n in SafetensorsCheckpoint(path).names())
    assert lora_elements(path) == _loaded_elements(path)
    assert lora_elements(path) > stored  # the block-diagonal factors hold more than the parts
    assert lora_device_bytes(path, 2) == 2 * _loaded_elements(path)


def test_a_converted_lora_folder_counts_the_same(tmp_path):
    path = tmp_path / "lora.safetensors"
    _write_lora(path, LINEARS)
    folder = save_part(lora_tensors(SafetensorsCheckpoint(path), CONFIG), tmp_path / "converted",
                       {"format": "longcat-dit-lora"}, progress=False)
    assert lora_elements(folder) == lora_elements(path)


def test_a_run_counts_the_larger_named_lora_and_every_user_lora(tmp_path, fixtures_dir):
    small, large, user = tmp_path / "small.safetensors", tmp_path / "large.safetensors", tmp_path / "user.safetensors"
    _write_lora(small, LINEARS[:1])
    _write_lora(large, LINEARS)
    _write_lora(user, LINEARS[2:3])
    root = fixtures_dir  # its text_encoder/ and vae/ configs
    models = checkpoint_models(root, CONFIG, dtype=np.float32, quantize=None, named_loras=[small, large],
                               user_loras=[user])
    assert models.lora_bytes == 4 * (_loaded_elements(large) + _loaded_elements(user))
