"""The flax DiT against the original's outputs (fixtures), in every mode of the original forward."""

import dataclasses
import warnings

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kernels import BSAParams, KernelConfig
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import ConfigError, InputError
from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.loading import load_dit

TOL_F32 = 1e-4
TOL_BF16 = 2e-2
CALL_FLAGS = ("num_cond_latents", "return_kv", "skip_crs_attn")
forward = nnx.jit(lambda model, *args, **kwargs: model(*args, **kwargs), static_argnames=CALL_FLAGS)


@pytest.fixture(scope="module")
def cases(fixtures_dir):
    ckpt = SafetensorsCheckpoint(fixtures_dir / "dit_cases.safetensors")
    return {name: jnp.asarray(ckpt.read(name)) for name in ckpt.names()}


@pytest.fixture(scope="module")
def model(fixtures_dir):
    return load_dit(fixtures_dir / "dit", dtype=jnp.float32)


def t2v_inputs(cases):
    return (cases["t2v.hidden_states"], cases["t2v.timestep"], cases["t2v.encoder_hidden_states"],
            cases["t2v.encoder_attention_mask"])


def test_t2v_matches_original(model, cases):
    out = forward(model, *t2v_inputs(cases))
    chex.assert_shape(out, cases["t2v.out"].shape)
    assert out.dtype == jnp.float32
    assert rel_l2(out, cases["t2v.out"]) < TOL_F32


def test_i2v_per_frame_timesteps_and_condition_frames(model, cases):
    hidden, _, text, mask = t2v_inputs(cases)
    out = forward(model, hidden, cases["i2v.timestep"], text, mask, num_cond_latents=1)
    assert rel_l2(out, cases["i2v.out"]) < TOL_F32


def test_kv_cache_of_condition_frames(model, cases):
    _, _, text, mask = t2v_inputs(cases)
    cond = cases["kvcache.cond_latents"]
    batch, frames = cond.shape[0], cond.shape[2]
    _, (keys, values) = forward(model, cond, jnp.zeros((batch, frames)), jnp.zeros_like(text), None,
                                return_kv=True, skip_crs_attn=True)
    chex.assert_rank([keys, values], 5)  # [depth, B, S, H, D]
    # The fixture stores block 0's cache as [B, H, S, D].
    assert rel_l2(keys[0].transpose(0, 2, 1, 3), cases["kvcache.block0.k"]) < TOL_F32
    assert rel_l2(values[0].transpose(0, 2, 1, 3), cases["kvcache.block0.v"]) < TOL_F32
    out = forward(model, cases["kvcache.hidden_states"], cases["kvcache.timestep"], text, mask,
                  num_cond_latents=frames, kv_cache=(keys, values))
    assert rel_l2(out, cases["kvcache.out"]) < TOL_F32
    # A cache of batch 1 serves every item, as in the original.
    out_shared = forward(model, cases["kvcache.hidden_states"], cases["kvcache.timestep"], text, mask,
                         num_cond_latents=frames, kv_cache=(keys[:, :1], values[:, :1]))
    out_first = forward(model, cases["kvcache.hidden_states"], cases["kvcache.timestep"], text, mask,
                        num_cond_latents=frames, kv_cache=(jnp.repeat(keys[:, :1], batch, 1),
                                                           jnp.repeat(values[:, :1], batch, 1)))
    np.testing.assert_allclose(out_shared, out_first, rtol=0, atol=1e-6)


def test_kv_cache_of_wrong_size_is_refused(model, cases):
    _, _, text, mask = t2v_inputs(cases)
    cond = cases["kvcache.cond_latents"]
    _, cache = forward(model, cond[:, :, :1], jnp.zeros((cond.shape[0], 1)), text, mask, return_kv=True,
                       skip_crs_attn=True)
    with pytest.raises(InputError, match="kv_cache"):
        forward(model, cases["kvcache.hidden_states"], cases["kvcache.timestep"], text, mask, num_cond_latents=2,
                kv_cache=cache)


def test_bsa_matches_original(fixtures_dir, model, cases):
    bsa = BSAParams(sparsity=0.75, cdf_threshold=None, chunk_3d_shape_q=(4, 4, 4), chunk_3d_shape_k=(4, 4, 4))
    sparse = load_dit(fixtures_dir / "dit", dtype=jnp.float32)
    assert sparse.bsa is None  # the fixture config has enable_bsa false
    sparse.set_bsa(bsa)
    assert sparse.bsa == bsa
    hidden = cases["bsa.hidden_states"]
    text, mask = cases["t2v.encoder_hidden_states"][:1], cases["t2v.encoder_attention_mask"][:1]
    out = forward(sparse, hidden, jnp.asarray([700.0]), text, mask)
    assert rel_l2(out, cases["bsa.out"]) < TOL_F32
    dense = forward(model, hidden, jnp.asarray([700.0]), text, mask)
    assert rel_l2(dense, cases["bsa.out"]) > 10 * TOL_F32  # the sparse case really is sparse
    # A single latent frame never uses BSA (as the original): same as dense.
    one_frame = hidden[:, :, :1]
    np.testing.assert_allclose(forward(sparse, one_frame, jnp.asarray([700.0]), text, mask),
                               forward(model, one_frame, jnp.asarray([700.0]), text, mask), rtol=0, atol=1e-6)
    sparse.set_bsa(None)
    assert sparse.bsa is None
    np.testing.assert_allclose(forward(sparse, hidden, jnp.asarray([700.0]), text, mask), dense, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="set_bsa takes a kernels.BSAParams or None, got dict"):
        sparse.set_bsa({"sparsity": 0.9})
    with pytest.raises(ConfigError, match="set_bsa takes a kernels.BSAParams or None, got bool"):
        sparse.set_bsa(True)
    with pytest.raises(ConfigError, match="unknown BSA backend 'cuda'"):
        sparse.set_bsa(bsa, backend="cuda")
    with pytest.raises(ConfigError, match="kernel_config must be a kernels.KernelConfig or None, got dict"):
        sparse.set_bsa(bsa, kernel_config={"backward": "mosaic"})
    assert sparse.bsa is None and sparse.bsa_kernel_config is None  # a refused call changes nothing


def test_the_bsa_setting_lives_in_one_place(fixtures_dir):
    """The DiT holds one setting, passed to every block's self attention at call time: no copy per block."""
    model = load_dit(fixtures_dir / "dit", dtype=jnp.float32)
    model.set_bsa(BSAParams(sparsity=0.5), kernel_config=KernelConfig(backward="mosaic"))
    for block in model.blocks:
        assert not hasattr(block.attn, "bsa") and not hasattr(block.attn, "bsa_kernel_config")
    config = DiTConfig.from_dict({**model.config.to_dict(), "enable_bsa": True, "bsa_params": {"sparsity": 0.5}})
    assert load_dit(fixtures_dir / "dit", config=config, dtype=jnp.float32).bsa == BSAParams(sparsity=0.5)


def test_recorded_bsa_selection_is_captured_without_deprecated_sow(fixtures_dir, cases):
    bsa = BSAParams(sparsity=0.75, cdf_threshold=None, chunk_3d_shape_q=(4, 4, 4), chunk_3d_shape_k=(4, 4, 4))
    sparse = load_dit(fixtures_dir / "dit", dtype=jnp.float32)
    sparse.set_bsa(bsa)
    hidden = cases["bsa.hidden_states"]
    text, mask = cases["t2v.encoder_hidden_states"][:1], cases["t2v.encoder_attention_mask"][:1]
    sparse.record_bsa_selection(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        out, sown = nnx.capture(sparse, nnx.Intermediate)(hidden, jnp.asarray([700.0]), text, mask)
    assert rel_l2(out, cases["bsa.out"]) < TOL_F32  # recording does not change the output
    assert not nnx.state(sparse, nnx.Intermediate)  # nothing is left on the model
    for index in range(len(sparse.blocks)):
        (selection,) = sown["blocks"][index]["attn"]["bsa_selection"].get_value()  # one call per block
        num_k_blocks = selection.shape[-1]
        chex.assert_shape(selection, (hidden.shape[0], sparse.config.num_heads, num_k_blocks, num_k_blocks))
        np.testing.assert_array_equal(selection.sum(-1), bsa.num_topk(num_k_blocks))
    sparse.record_bsa_selection(False)
    _, sown = nnx.capture(sparse, nnx.Intermediate)(hidden, jnp.asarray([700.0]), text, mask)
    assert not sown


def test_bfloat16_t2v_within_tolerance(fixtures_dir, cases):
    bf16 = load_dit(fixtures_dir / "dit", dtype=jnp.bfloat16)
    assert bf16.blocks[0].attn.qkv.kernel.get_value().dtype == jnp.bfloat16
    out = forward(bf16, *t2v_inputs(cases))
    assert out.dtype == jnp.float32
    assert rel_l2(out, cases["t2v.out"]) < TOL_BF16


def test_text_mask_without_zero_pad_equals_truncated_text(fixtures_dir, model, cases):
    """Without text_tokens_zero_pad, padded tokens are not attended: same as dropping them."""
    unpadded = nnx.clone(model)
    unpadded.config = dataclasses.replace(model.config, text_tokens_zero_pad=False)
    hidden, timestep, text, mask = t2v_inputs(cases)
    length = int(mask[1].sum())
    assert length < mask.shape[1], "the fixture's second item should be padded"
    out = forward(unpadded, hidden[1:], timestep[1:], text[1:], mask[1:])
    alone = forward(unpadded, hidden[1:], timestep[1:], text[1:, :, :length], None)
    np.testing.assert_allclose(out, alone, rtol=0, atol=2e-5)
    # With zero padding (the released config) the padded tokens take part as zero vectors.
    padded = forward(model, hidden[1:], timestep[1:], text[1:], mask[1:])
    assert rel_l2(padded, alone) > 1e-3
    garbage = text.at[1, :, length:].set(5.0)
    np.testing.assert_allclose(forward(model, hidden[1:], timestep[1:], garbage[1:], mask[1:]), padded, atol=1e-6)


def test_config_refuses_unknown_keys_and_ignores_implementation_switches(fixtures_dir):
    raw = {"hidden_size": 64, "depth": 1, "num_heads": 2, "enable_flashattn3": True, "cp_split_hw": [1, 1],
           "_class_name": "LongCatVideoTransformer3DModel"}
    assert DiTConfig.from_dict(raw).hidden_size == 64
    with pytest.raises(ConfigError, match="unknown key"):
        DiTConfig.from_dict({**raw, "num_layers": 3})
    with pytest.raises(ConfigError, match="bsa_params"):
        DiTConfig.from_dict({**raw, "enable_bsa": True})
    with pytest.raises(ConfigError, match="patch_size must be three positive ints"):
        DiTConfig.from_dict({**raw, "patch_size": [True, 2, 2]})
    with pytest.raises(ConfigError, match="'enable_bsa' must be true or false, got 'false'"):
        DiTConfig.from_dict({**raw, "enable_bsa": "false"})
    with pytest.raises(ConfigError, match="text_tokens_zero_pad must be true or false"):
        DiTConfig.from_dict({**raw, "text_tokens_zero_pad": 1})
    with pytest.raises(ConfigError, match=r"DiT config: bad 'bsa_params': sparsity must be in \[0, 1\), got 1.5"):
        DiTConfig.from_dict({**raw, "bsa_params": {"sparsity": 1.5}})
    with pytest.raises(ConfigError, match="bsa_params must be a kernels.BSAParams or None, got dict"):
        DiTConfig(bsa_params={"sparsity": 0.5})
    config = DiTConfig.from_json(fixtures_dir / "dit" / "config.json")
    assert DiTConfig.from_dict(config.to_dict()) == config
    assert DiTConfig().ffn_hidden_size == 11008  # the released 13.6B model


def test_patch_grid_must_divide(model, cases):
    hidden, timestep, text, mask = t2v_inputs(cases)
    with pytest.raises(InputError, match="patch size"):
        model(hidden[..., :-1], timestep, text, mask)


def test_wrong_latent_or_text_width_is_named(model, cases):
    hidden, timestep, text, mask = t2v_inputs(cases)
    channels, width = model.config.in_channels, model.config.caption_channels
    with pytest.raises(InputError, match=rf"latents \[B, {channels}, T, H, W\] \(this DiT's in_channels\)"):
        model(hidden[:, :-1], timestep, text, mask)
    with pytest.raises(InputError, match=rf"latents \[B, {channels}, T, H, W\]"):
        model(hidden[:, :, 0], timestep, text, mask)
    with pytest.raises(InputError, match=f"caption_channels {width}"):
        model(hidden, timestep, text[..., :-1], mask)
