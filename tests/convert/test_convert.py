"""`python -m convert`: round trip, streaming memory bound, and each refusal of a bad checkpoint."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from convert.__main__ import main as convert_main
from convert.api import convert_checkpoint
from longcat_jax.checkpoint.orbax_chunks import is_converted, iter_part, read_index, save_part
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError
from longcat_jax.models.dit import load_dit, load_lora
from tests.helpers.dit_checkpoints import dit_config, write_original_dit, write_safetensors, write_sharded

REPO = Path(__file__).resolve().parents[2]
forward = nnx.jit(lambda model, *args: model(*args))


@pytest.fixture(scope="module")
def converted(fixtures_dir, tmp_path_factory):
    """The fixture folder laid out as a user's download (dit/, vae/, text_encoder/, lora/, tokenizer/,
    scheduler/), converted with the command line."""
    src = tmp_path_factory.mktemp("src")
    fixtures_dir = fixtures_dir.resolve()  # links must not depend on the working directory
    for part in ("dit", "vae", "text_encoder"):
        (src / part).symlink_to(fixtures_dir / part)
    (src / "lora").mkdir()
    (src / "lora" / "lora_rank8.safetensors").symlink_to(fixtures_dir / "lora_rank8.safetensors")
    (src / "tokenizer").mkdir()
    (src / "tokenizer" / "spiece.model").write_bytes(b"tokenizer bytes")
    (src / "scheduler").mkdir()
    (src / "scheduler" / "scheduler_config.json").write_text('{"shift": 1.0}')
    dst = tmp_path_factory.mktemp("dst") / "converted"
    assert convert_main([str(src), str(dst), "--quiet"]) == 0
    return src, dst


def test_every_part_is_converted_or_copied(converted):
    src, dst = converted
    for part in ("dit", "vae", "text_encoder", "lora/lora_rank8"):
        assert is_converted(dst / part), part
    assert (dst / "tokenizer" / "spiece.model").read_bytes() == b"tokenizer bytes"
    assert json.loads((dst / "scheduler" / "scheduler_config.json").read_text()) == {"shift": 1.0}
    assert json.loads((dst / "dit" / "config.json").read_text()) == json.loads((src / "dit" / "config.json").read_text())
    # Every tensor keeps its dtype: the DiT is bf16 on disk and stays bf16.
    original = SafetensorsCheckpoint(src / "dit")
    assert {e["dtype"] for e in read_index(dst / "dit")} == {"bfloat16"}
    assert len(read_index(dst / "dit")) == len(original.names())
    assert not list(dst.rglob("*.partial"))


def test_round_trip_gives_the_same_model(converted, fixtures_dir):
    src, dst = converted
    direct = load_dit(src / "dit", dtype=jnp.float32)
    from_orbax = load_dit(dst / "dit", dtype=jnp.float32)
    for a, b in zip(jax.tree.leaves(nnx.state(direct, nnx.Param)), jax.tree.leaves(nnx.state(from_orbax, nnx.Param))):
        np.testing.assert_array_equal(a, b)
    cases = SafetensorsCheckpoint(fixtures_dir / "dit_cases.safetensors")
    args = [jnp.asarray(cases.read(f"t2v.{n}")) for n in
            ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask")]
    np.testing.assert_array_equal(forward(direct, *args), forward(from_orbax, *args))


def test_converted_lora_loads_the_same_factors(converted):
    src, dst = converted
    direct = load_lora(src / "lora" / "lora_rank8.safetensors")
    from_orbax = load_lora(dst / "lora" / "lora_rank8")
    assert direct.name == from_orbax.name == "lora_rank8"
    assert direct.modules.keys() == from_orbax.modules.keys()
    for key, factors in direct.modules.items():
        np.testing.assert_array_equal(factors.down, from_orbax.modules[key].down)
        np.testing.assert_array_equal(factors.up, from_orbax.modules[key].up)
        assert factors.alpha_scale == from_orbax.modules[key].alpha_scale


def test_save_part_chunks_by_block_and_round_trips_scalars(tmp_path):
    tensors = [(("embed", "kernel"), np.ones((3, 2), ml_dtypes.bfloat16)),
               (("blocks", 0, "w"), np.arange(4, dtype=np.float32)),
               (("blocks", 0, "alpha"), np.float32(0.5) * np.ones((), np.float32)),
               (("blocks", 1, "w"), np.zeros((2,), np.int64))]
    save_part(iter(tensors), tmp_path / "part", {"a": 1})
    assert sorted({e["chunk"] for e in read_index(tmp_path / "part")}) == [0, 1, 2]
    back = list(iter_part(tmp_path / "part"))
    assert [p for p, _ in back] == [p for p, _ in tensors]
    for (_, got), (_, want) in zip(back, tensors):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    with pytest.raises(CheckpointError, match="already exists"):
        save_part(iter(tensors), tmp_path / "part", {})


def test_conversion_streams_one_block_at_a_time(tmp_path):
    """Peak resident memory (anonymous and file-backed: pages of a source kept mapped count too) while
    converting a 16-block DiT stays within a few blocks (the block being written plus Orbax/tensorstore's
    write buffers), far below the whole checkpoint."""
    config = dit_config(hidden_size=512, depth=16, num_heads=4)
    tensors = write_original_dit(tmp_path / "big" / "dit", config, num_shards=3)
    block_bytes = sum(a.nbytes for n, a in tensors.items() if n.startswith("blocks.0."))
    total_bytes = sum(a.nbytes for a in tensors.values())
    del tensors
    write_original_dit(tmp_path / "warmup" / "dit", dit_config(hidden_size=512, depth=1, num_heads=4))
    probe = textwrap.dedent(f"""
        import json, threading, time
        from convert.api import convert_checkpoint
        def resident():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        convert_checkpoint({str(tmp_path / "warmup")!r}, {str(tmp_path / "out_warmup")!r}, allow_incomplete=True)
        base = resident(); peak = [base]; running = [True]
        def sample():
            while running[0]:
                peak[0] = max(peak[0], resident()); time.sleep(0.0005)
        thread = threading.Thread(target=sample); thread.start()
        convert_checkpoint({str(tmp_path / "big")!r}, {str(tmp_path / "out_big")!r}, allow_incomplete=True)
        running[0] = False; thread.join()
        print(json.dumps(peak[0] - base))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300, check=True)
    growth = json.loads(result.stdout.strip().splitlines()[-1])
    assert 8 * block_bytes <= total_bytes / 2  # the bound below would catch a converter holding everything
    assert growth < 8 * block_bytes, f"peak growth {growth / 2**20:.1f} MiB, one block {block_bytes / 2**20:.1f} MiB"
    assert is_converted(tmp_path / "out_big" / "dit")


SMALL = dit_config(hidden_size=64, depth=2, num_heads=2)


def _read_shards(folder: Path) -> dict[str, np.ndarray]:
    ckpt = SafetensorsCheckpoint(folder)
    return {n: np.array(ckpt.read(n)) for n in ckpt.names()}


def _rewrite(folder: Path, tensors: dict[str, np.ndarray]) -> None:
    for file in folder.glob("*.safetensors*"):
        file.unlink()
    write_sharded(folder, tensors, 2)


def _refused(src: Path, dst: Path, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        convert_checkpoint(src, dst, allow_incomplete=True)
    assert not dst.exists() or not any(dst.iterdir()), "a refused conversion must write nothing"
    with pytest.raises(CheckpointError, match=match):
        load_dit(src / "dit", dtype=jnp.float32)


@pytest.fixture
def small_src(tmp_path):
    write_original_dit(tmp_path / "src" / "dit", SMALL)
    return tmp_path / "src"


def test_refuses_unmapped_key(small_src, tmp_path):
    tensors = _read_shards(small_src / "dit")
    tensors["blocks.0.attn.extra.weight"] = np.zeros((4,), ml_dtypes.bfloat16)
    _rewrite(small_src / "dit", tensors)
    _refused(small_src, tmp_path / "dst", "blocks.0.attn.extra.weight")


def test_refuses_missing_key(small_src, tmp_path):
    tensors = _read_shards(small_src / "dit")
    del tensors["blocks.1.ffn.w2.weight"]
    _rewrite(small_src / "dit", tensors)
    _refused(small_src, tmp_path / "dst", r"missing.*blocks\.1\.ffn\.w2\.kernel")


def test_refuses_shape_mismatch(small_src, tmp_path):
    tensors = _read_shards(small_src / "dit")
    tensors["blocks.0.attn.qkv.weight"] = tensors["blocks.0.attn.qkv.weight"][:-2]
    _rewrite(small_src / "dit", tensors)
    _refused(small_src, tmp_path / "dst", r"blocks\.0\.attn\.qkv\.weight.*shape")


def test_refuses_truncated_shard(small_src, tmp_path):
    shard = sorted((small_src / "dit").glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    _refused(small_src, tmp_path / "dst", "truncated")


def test_refuses_header_whose_shape_does_not_fit_its_bytes(tmp_path):
    write_safetensors(tmp_path / "forged.safetensors", {"a": np.zeros((4,), np.float32)}, shapes={"a": (5,)})
    with pytest.raises(CheckpointError, match="tensor a of shape \\(5,\\).*header is damaged"):
        SafetensorsCheckpoint(tmp_path / "forged.safetensors")


def test_refuses_missing_shard(small_src, tmp_path):
    sorted((small_src / "dit").glob("*.safetensors"))[1].unlink()
    _refused(small_src, tmp_path / "dst", "missing shard")


def test_refuses_lora_for_another_model(small_src, tmp_path, fixtures_dir):
    """The fixture LoRA is for a hidden-256 DiT; next to a hidden-64 dit/ it is refused before writing."""
    (small_src / "lora").mkdir()
    (small_src / "lora" / "big.safetensors").symlink_to(fixtures_dir.resolve() / "lora_rank8.safetensors")
    with pytest.raises(CheckpointError, match="features"):
        convert_checkpoint(small_src, tmp_path / "dst", allow_incomplete=True)
    assert not (tmp_path / "dst" / "dit").exists()


def test_command_line_reports_errors_without_traceback(tmp_path, capsys):
    assert convert_main([str(tmp_path / "nothing"), str(tmp_path / "dst")]) == 1
    assert "error:" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="LongCat-Video checkpoint folder"):
        convert_checkpoint(tmp_path / "empty", tmp_path / "dst")


def test_damaged_converted_checkpoint_is_refused(small_src, tmp_path):
    convert_checkpoint(small_src, tmp_path / "dst", allow_incomplete=True)
    part = tmp_path / "dst" / "dit"
    load_dit(part, dtype=jnp.float32)
    chunk = sorted((part / "chunks").iterdir())[1]
    for file in sorted(p for p in chunk.rglob("*") if p.is_file() and p.stat().st_size > 64):
        file.write_bytes(file.read_bytes()[:16])
    with pytest.raises(CheckpointError, match="chunk 00001"):
        load_dit(part, dtype=jnp.float32)
    shutil.rmtree(chunk)
    with pytest.raises(CheckpointError, match="chunk 00001 is missing"):
        load_dit(part, dtype=jnp.float32)


@pytest.fixture
def complete_src(fixtures_dir, tmp_path):
    """A source with every part a generation run needs except the tokenizer."""
    src = tmp_path / "src"
    src.mkdir()
    for part in ("dit", "vae", "text_encoder"):
        (src / part).symlink_to(fixtures_dir.resolve() / part)
    return src


def test_a_source_without_a_tokenizer_is_refused_before_anything_is_written(complete_src, tmp_path, capsys):
    """`generate` refuses a folder without a tokenizer, so converting one is refused unless asked for."""
    assert convert_main([str(complete_src), str(tmp_path / "dst"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "lacks tokenizer" in err and "--allow-incomplete" in err
    (complete_src / "tokenizer").mkdir()
    assert convert_main([str(complete_src), str(tmp_path / "dst"), "-q"]) == 1
    assert "tokenizer/tokenizer.json or spiece.model" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()
    assert convert_main([str(complete_src), str(tmp_path / "dst"), "-q", "--allow-incomplete"]) == 0
    assert is_converted(tmp_path / "dst" / "vae")


def test_quiet_prints_no_progress_bars(small_src, tmp_path, capsys):
    assert convert_main([str(small_src), str(tmp_path / "loud"), "--allow-incomplete"]) == 0
    assert "tensor/s" in capsys.readouterr().err  # the bar, so the quiet run below is a real check
    assert convert_main([str(small_src), str(tmp_path / "quiet"), "-q", "--allow-incomplete"]) == 0
    assert capsys.readouterr().err == ""
