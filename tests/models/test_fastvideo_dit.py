"""The DiT and its LoRAs in FastVideo's layout (`transformer/`, q/k/v and cross-attention k/v split, embedders
renamed; LoRAs as lora_A / lora_B / lora_alpha): the same model and factors as the original layout, bit for bit,
and the original path's strict checks, each refusal naming the FastVideo tensor."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError
from longcat_jax.models.dit import load_dit
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.fastvideo_lora_params import dit_lora_tensors, is_fastvideo_lora, lora_tensor_count
from longcat_jax.models.dit.fastvideo_params import checkpoint_dit_tensors, fastvideo_tensors, original_module
from longcat_jax.models.dit.lora_params import lora_tensors
from longcat_jax.models.dit.params import block_order_key, original_tensors
from tests.helpers.dit_checkpoints import write_safetensors
from tests.helpers.fastvideo_checkpoint import fastvideo_dit, fastvideo_dit_config, fastvideo_lora, read_all

forward = nnx.jit(lambda model, *args: model(*args))


@pytest.fixture(scope="module")
def fastvideo_tensors_of_fixture(fixtures_dir) -> dict[str, np.ndarray]:
    return fastvideo_dit(read_all(fixtures_dir / "dit"))


@pytest.fixture(scope="module")
def fixture_config(fixtures_dir) -> dict:
    return json.loads((fixtures_dir / "dit" / "config.json").read_text())


def _transformer(folder: Path, tensors: dict[str, np.ndarray], config: dict) -> Path:
    """A FastVideo `transformer/` folder holding `tensors` (one file, as FastVideo writes it)."""
    folder.mkdir(parents=True)
    write_safetensors(folder / "model.safetensors", tensors)
    (folder / "config.json").write_text(json.dumps(fastvideo_dit_config(config)))
    return folder


@pytest.fixture(scope="module")
def transformer(tmp_path_factory, fastvideo_tensors_of_fixture, fixture_config) -> Path:
    return _transformer(tmp_path_factory.mktemp("fastvideo") / "transformer", fastvideo_tensors_of_fixture,
                        fixture_config)


def test_every_original_tensor_has_its_fastvideo_parts(fixture_config):
    """The map covers the original checkpoint: each original tensor is split into parts that tile its outputs."""
    config = DiTConfig.from_dict(fixture_config)
    table, originals = fastvideo_tensors(config), original_tensors(config)
    assert {t.original for t in table.values()} == set(originals)
    for name, tensor in originals.items():
        parts = [t for t in table.values() if t.original == name]
        assert sorted(t.part for t in parts) == list(range(len(parts)))
        assert sum(t.shape[0] for t in parts) == tensor.original_shape[0]
    assert original_module("blocks.1.self_attn.to_v") == ("blocks.1.attn.qkv", 2, 3)
    assert original_module("blocks.1.cross_attn.to_k") == ("blocks.1.cross_attn.kv_linear", 0, 2)
    assert original_module("patch_embed.proj") == ("x_embedder.proj", 0, 1)
    assert original_module("blocks.1.attn.qkv") is None


def test_fastvideo_layout_loads_the_same_model_bit_for_bit(fixtures_dir, transformer):
    original = load_dit(fixtures_dir / "dit", dtype=jnp.float32)
    fastvideo = load_dit(transformer, dtype=jnp.float32)
    assert fastvideo.config == original.config
    for a, b in zip(jax.tree.leaves(nnx.state(original, nnx.Param)), jax.tree.leaves(nnx.state(fastvideo, nnx.Param)),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    cases = SafetensorsCheckpoint(fixtures_dir / "dit_cases.safetensors")
    args = [jnp.asarray(cases.read(f"t2v.{n}")) for n in
            ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask")]
    np.testing.assert_array_equal(forward(original, *args), forward(fastvideo, *args))


def test_the_stream_yields_one_tensor_per_parameter(transformer, fixtures_dir):
    config = DiTConfig.from_json(transformer / "config.json")
    tensors, count = checkpoint_dit_tensors(SafetensorsCheckpoint(transformer), config)
    assert count == len(list(tensors)) == len(SafetensorsCheckpoint(fixtures_dir / "dit").names())


def test_block_order_gives_the_original_layouts_stream_in_the_same_order(transformer, fixtures_dir):
    config = DiTConfig.from_json(transformer / "config.json")
    ours, _ = checkpoint_dit_tensors(SafetensorsCheckpoint(transformer), config, block_order=True)
    theirs, _ = checkpoint_dit_tensors(SafetensorsCheckpoint(fixtures_dir / "dit"), config, block_order=True)
    ours, theirs = list(ours), list(theirs)
    assert [block_order_key(path) for path, _ in ours] == sorted(block_order_key(path) for path, _ in ours)
    assert {path for path, _ in ours} == {path for path, _ in theirs}
    assert [block_order_key(p) for p, _ in ours] == [block_order_key(p) for p, _ in theirs]


def _refusal(tmp_path, fastvideo_tensors_of_fixture, fixture_config, change) -> str:
    tensors = dict(fastvideo_tensors_of_fixture)
    change(tensors)
    folder = _transformer(tmp_path / "transformer", tensors, fixture_config)
    with pytest.raises(CheckpointError) as error:
        load_dit(folder, dtype=jnp.float32)
    return str(error.value)


def test_a_missing_tensor_is_refused_by_its_fastvideo_name(tmp_path, fastvideo_tensors_of_fixture, fixture_config):
    message = _refusal(tmp_path, fastvideo_tensors_of_fixture, fixture_config,
                       lambda t: t.pop("blocks.0.self_attn.to_v.weight"))
    assert "'blocks.0.self_attn.to_v.weight'" in message and "missing" in message


def test_an_extra_tensor_is_refused_by_name(tmp_path, fastvideo_tensors_of_fixture, fixture_config):
    def add(tensors):
        tensors["blocks.0.self_attn.to_qkv.weight"] = tensors["blocks.0.self_attn.to_q.weight"]

    message = _refusal(tmp_path, fastvideo_tensors_of_fixture, fixture_config, add)
    assert "'blocks.0.self_attn.to_qkv.weight'" in message and "no place" in message


def test_an_original_name_among_fastvideo_names_is_refused(tmp_path, fastvideo_tensors_of_fixture, fixture_config):
    def add(tensors):
        tensors["x_embedder.proj.bias"] = tensors["patch_embed.proj.bias"]

    assert "'x_embedder.proj.bias'" in _refusal(tmp_path, fastvideo_tensors_of_fixture, fixture_config, add)


def test_a_misshapen_part_is_refused_by_name(tmp_path, fastvideo_tensors_of_fixture, fixture_config):
    def shrink(tensors):
        tensors["blocks.0.cross_attn.to_k.weight"] = tensors["blocks.0.cross_attn.to_k.weight"][:-1]

    message = _refusal(tmp_path, fastvideo_tensors_of_fixture, fixture_config, shrink)
    assert "'blocks.0.cross_attn.to_k.weight'" in message and "shape" in message


def test_parts_of_one_weight_in_two_dtypes_are_refused(tmp_path, fastvideo_tensors_of_fixture, fixture_config):
    def widen(tensors):
        tensors["blocks.0.self_attn.to_k.bias"] = tensors["blocks.0.self_attn.to_k.bias"].astype(np.float32)

    message = _refusal(tmp_path, fastvideo_tensors_of_fixture, fixture_config, widen)
    assert "blocks.0.self_attn.to_k.bias" in message and "different dtypes" in message


def test_float32_weights_as_on_fastvideos_hub_load_as_the_bf16_ones(tmp_path, fixtures_dir, fastvideo_tensors_of_fixture,
                                                                    fixture_config):
    """The hub's FastVideo mirror stores the DiT in float32; the values are the bf16 ones widened."""
    wide = {name: array.astype(np.float32) for name, array in fastvideo_tensors_of_fixture.items()}
    folder = _transformer(tmp_path / "transformer", wide, fixture_config)
    original = load_dit(fixtures_dir / "dit", dtype=jnp.bfloat16)
    fastvideo = load_dit(folder, dtype=jnp.bfloat16)
    for a, b in zip(jax.tree.leaves(nnx.state(original, nnx.Param)), jax.tree.leaves(nnx.state(fastvideo, nnx.Param)),
                    strict=True):
        assert a.dtype == b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------------ LoRAs


def _lora_file(path: Path, tensors: dict[str, np.ndarray]) -> SafetensorsCheckpoint:
    write_safetensors(path, tensors)
    return SafetensorsCheckpoint(path)


def _assert_same_factors(got, want):
    got, want = dict(got), dict(want)
    assert got.keys() == want.keys()
    for path in want:
        assert got[path].dtype == want[path].dtype, path
        np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))


def test_fastvideo_lora_gives_the_original_factors(tmp_path, fixtures_dir, fixture_config):
    """The fixture LoRA (one lora_up per Linear, so q/k/v share lora_A in FastVideo's form): the same factors."""
    original = SafetensorsCheckpoint(fixtures_dir / "lora_rank8.safetensors")
    fastvideo = _lora_file(tmp_path / "lora.safetensors", fastvideo_lora(read_all(fixtures_dir / "lora_rank8.safetensors")))
    assert is_fastvideo_lora(fastvideo) and not is_fastvideo_lora(original)
    config = DiTConfig.from_dict(fixture_config)
    _assert_same_factors(dit_lora_tensors(fastvideo, config), lora_tensors(original, config))
    _assert_same_factors(dit_lora_tensors(original), lora_tensors(original))
    assert lora_tensor_count(fastvideo) == len(list(dit_lora_tensors(fastvideo)))


def _split_up_lora(fixtures_dir: Path) -> dict[str, np.ndarray]:
    """The fixture LoRA with each fused Linear's update in the original's `lora_up.blocks.N` form (as the released
    LoRAs store it): rank 8 per part, lora_down stacking the parts' rows."""
    tensors = read_all(fixtures_dir / "lora_rank8.safetensors")
    rng = np.random.default_rng(0)
    for fused, parts in (("attn___lorahyphen___qkv", 3), ("cross_attn___lorahyphen___kv_linear", 2)):
        for name in [n for n in tensors if fused in n and n.endswith(".lora_up.weight")]:
            module = name.removesuffix(".lora_up.weight")
            up, down = tensors.pop(name), tensors[f"{module}.lora_down.weight"]
            tensors[f"{module}.lora_down.weight"] = rng.standard_normal(
                (parts * down.shape[0], down.shape[1]), dtype=np.float32).astype(ml_dtypes.bfloat16)
            for i, block in enumerate(np.split(up, parts, axis=0)):
                tensors[f"{module}.lora_up.blocks.{i}.weight"] = np.ascontiguousarray(block)
    return tensors


def test_fastvideo_lora_of_split_parts_gives_the_original_factors(tmp_path, fixtures_dir):
    """FastVideo's conversion of `lora_up.blocks.N` (each part its rows of lora_down and its block) loads as the
    original: lora_down stacked, the blocks on the diagonal of lora_up."""
    original = _lora_file(tmp_path / "original.safetensors", _split_up_lora(fixtures_dir))
    fastvideo = _lora_file(tmp_path / "fastvideo.safetensors", fastvideo_lora(read_all(original.path)))
    _assert_same_factors(dit_lora_tensors(fastvideo), lora_tensors(original))


def test_a_lora_on_some_parts_of_a_fused_linear_leaves_the_others_unchanged(tmp_path, fixtures_dir):
    """A FastVideo LoRA on to_q alone (as FastVideo's own training may make) updates only the q columns of our qkv."""
    tensors = fastvideo_lora(read_all(fixtures_dir / "lora_rank8.safetensors"))
    kept = {n: a for n, a in tensors.items() if n.startswith("blocks.0.self_attn.to_q.")}
    factors = dict(dit_lora_tensors(_lora_file(tmp_path / "q.safetensors", kept)))
    down, up = (factors[("blocks", 0, "attn", "qkv", k)] for k in ("lora_down", "lora_up"))
    a, b = (kept[f"blocks.0.self_attn.to_q.{k}"] for k in ("lora_A", "lora_B"))
    width = b.shape[0]
    np.testing.assert_array_equal(down, a.T)
    np.testing.assert_array_equal(up[:, :width], b.T)
    assert up.shape[1] == 3 * width and not up[:, width:].astype(np.float32).any()
    alpha = float(kept["blocks.0.self_attn.to_q.lora_alpha"]) / a.shape[0]
    assert float(factors[("blocks", 0, "attn", "qkv", "alpha_scale")]) == pytest.approx(alpha, rel=1e-7)


@pytest.mark.parametrize(("change", "match"), [
    (lambda t: t.pop("blocks.0.ffn.w1.lora_B"), r"'blocks.0.ffn.w1' lacks \['lora_B'\]"),
    (lambda t: t.update({"blocks.0.ffn.w4.lora_A": t["blocks.0.ffn.w1.lora_A"]}), "'blocks.0.ffn.w4.lora_A'"),
    (lambda t: t.update({"blocks.0.self_attn.q_norm.lora_A": t["blocks.0.ffn.w1.lora_A"]}), "not a Linear"),
    (lambda t: t.update({"blocks.0.self_attn.to_k.lora_alpha": 2 * t["blocks.0.self_attn.to_k.lora_alpha"]}),
     "different alpha / rank"),
    (lambda t: t.update({"blocks.0.self_attn.to_k.lora_B": t["blocks.0.self_attn.to_k.lora_B"][:-1]}),
     "different widths"),
])
def test_bad_fastvideo_loras_are_refused(tmp_path, fixtures_dir, change, match):
    tensors = fastvideo_lora(read_all(fixtures_dir / "lora_rank8.safetensors"))
    change(tensors)
    with pytest.raises(CheckpointError, match=match):
        dict(dit_lora_tensors(_lora_file(tmp_path / "bad.safetensors", tensors)))


def test_a_fastvideo_lora_that_does_not_fit_the_dit_is_refused(tmp_path, fixtures_dir, fixture_config):
    tensors = fastvideo_lora(read_all(fixtures_dir / "lora_rank8.safetensors"))
    depth = fixture_config["depth"]
    tensors.update({n.replace("blocks.0.", f"blocks.{depth}.", 1): a for n, a in tensors.items() if ".ffn.w1." in n})
    lora = _lora_file(tmp_path / "lora.safetensors", tensors)
    with pytest.raises(CheckpointError, match=f"'blocks.{depth}.ffn.w1', which this DiT of depth {depth} lacks"):
        dit_lora_tensors(lora, DiTConfig.from_dict(fixture_config))
