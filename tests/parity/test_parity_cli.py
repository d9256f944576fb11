"""The parity tool: line format, summary, exit status, SKIP for missing groups, and the `dit` group
reading every size and hyper-parameter from the fixture folder (checked on a differently shaped one)."""

import json
import re
import sys
import types

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import longcat_jax.parity.__main__ as parity_cli
from kernels import BSAParams
from longcat_jax.models.dit import enable_loras, load_dit, load_lora
from longcat_jax.parity import dit as dit_group
from longcat_jax.parity.report import CaseResult, format_line, summary_line
from tests.helpers.dit_checkpoints import dit_config, write_original_dit, write_safetensors

LINE = re.compile(r"^(\w+)/(\S+) rel_l2=(\S+) tol=(\S+) (PASS|FAIL|SKIP)(  \(.*\))?$")
forward = nnx.jit(lambda model, *args, **kwargs: model(*args, **kwargs),
                  static_argnames=("num_cond_latents", "return_kv", "skip_crs_attn"))


def _fake_group(monkeypatch, name, run):
    module = types.ModuleType(f"longcat_jax.parity.{name}")
    module.run = run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(parity_cli, "GROUPS", (*parity_cli.GROUPS, name))


def test_lines_summary_and_exit_status(monkeypatch, tmp_path, capsys):
    _fake_group(monkeypatch, "good", lambda fixtures, dtype: [CaseResult("a", 1e-6, 1e-4, "PASS"),
                                                              CaseResult("b", 0.5, 1e-4, "FAIL", note="why")])
    _fake_group(monkeypatch, "crash", lambda fixtures, dtype: 1 / 0)
    monkeypatch.setattr(parity_cli, "GROUPS", (*parity_cli.GROUPS, "absent"))
    assert parity_cli.main(["--fixtures", str(tmp_path), "--only", "good,crash", "absent"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert [LINE.match(line).group(1, 2, 5) for line in lines[:-1]] == [
        ("good", "a", "PASS"), ("good", "b", "FAIL"), ("crash", "*", "FAIL"), ("absent", "*", "SKIP")]
    assert "ZeroDivisionError" in lines[2]
    assert lines[-1] == "1 passed, 2 failed, 1 skipped"


def test_exit_zero_only_when_everything_passes(monkeypatch, tmp_path, capsys):
    _fake_group(monkeypatch, "good", lambda fixtures, dtype: [CaseResult("a", 1e-6, 1e-4, "PASS")])
    assert parity_cli.main(["--fixtures", str(tmp_path), "--only", "good"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "1 passed, 0 failed, 0 skipped"
    _fake_group(monkeypatch, "empty", lambda fixtures, dtype: [])
    assert parity_cli.main(["--fixtures", str(tmp_path), "--only", "empty"]) == 1
    with pytest.raises(SystemExit):
        parity_cli.main(["--fixtures", str(tmp_path), "--only", "nosuchgroup"])


def test_report_helpers():
    assert format_line("dit", CaseResult("t2v", 3.9e-7, 1e-4, "PASS")) == "dit/t2v rel_l2=3.900e-07 tol=1e-04 PASS"
    assert summary_line([CaseResult("x", 0, 0, "SKIP")]) == "0 passed, 0 failed, 1 skipped"
    with pytest.raises(ValueError):
        CaseResult("x", 0.0, 1e-4, "OK")


def test_bsa_params_from_call_text():
    call = "enable_bsa with bsa_params {sparsity: 0.75, cdf_threshold: null, chunk_3d_shape_q/k: [4,4,4]}; batch 1"
    assert dit_group.parse_bsa_params(call) == BSAParams(0.75, None, (4, 4, 4), (4, 4, 4))
    call = 'bsa_params {"sparsity": null, "cdf_threshold": 0.9, "chunk_3d_shape_q": [2,4,4], "chunk_3d_shape_k": [4,2,2]}'
    assert dit_group.parse_bsa_params(call) == BSAParams(None, 0.9, (2, 4, 4), (4, 2, 2))


def _write_lora(path, hidden, rank, rng):
    tensors = {}
    for module, (fan_in, fan_out) in {"blocks.0.attn.qkv": (hidden, 3 * hidden),
                                      "blocks.0.ffn.w2": (256 * ((int(8 * hidden / 3) + 255) // 256), hidden)}.items():
        name = "lora___lorahyphen___" + module.replace(".", "___lorahyphen___")
        tensors[f"{name}.lora_down.weight"] = (rng.standard_normal((rank, fan_in)) * 0.1).astype(ml_dtypes.bfloat16)
        tensors[f"{name}.lora_up.weight"] = (rng.standard_normal((fan_out, rank)) * 0.1).astype(ml_dtypes.bfloat16)
        tensors[f"{name}.alpha_scale"] = np.asarray(0.5, np.float32)
    write_safetensors(path, tensors)


@pytest.fixture(scope="module")
def other_fixtures(tmp_path_factory):
    """A fixture folder of the same format with other sizes and call values; expected outputs from our
    own float32 model (this checks that the group reads everything from the folder, not parity itself)."""
    root = tmp_path_factory.mktemp("other_fixtures")
    rng = np.random.default_rng(1)
    config = dit_config(hidden_size=96, depth=1, num_heads=2, caption_channels=24, adaln_tembed_dim=32)
    write_original_dit(root / "dit", config, seed=3)
    _write_lora(root / "lora_r4.safetensors", 96, 4, rng)
    model = load_dit(root / "dit", dtype=jnp.float32)
    f32 = lambda shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
    t = {"t2v.hidden_states": f32((2, 4, 3, 8, 8)), "t2v.timestep": jnp.asarray([900.0, 120.5]),
         "t2v.encoder_hidden_states": f32((2, 1, 6, 24)),
         "t2v.encoder_attention_mask": np.asarray([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], np.int64),
         "i2v.timestep": jnp.asarray([[0.0, 0.0, 500.0], [0.0, 0.0, 40.0]]),
         "kvcache.cond_latents": f32((2, 4, 1, 8, 8)), "kvcache.hidden_states": f32((2, 4, 2, 8, 8)),
         "kvcache.timestep": jnp.asarray([300.0, 600.0]), "bsa.hidden_states": f32((1, 4, 4, 8, 8))}
    text = (t["t2v.encoder_hidden_states"], t["t2v.encoder_attention_mask"])
    t["t2v.out"] = forward(model, t["t2v.hidden_states"], t["t2v.timestep"], *text)
    t["i2v.out"] = forward(model, t["t2v.hidden_states"], t["i2v.timestep"], *text, num_cond_latents=2)
    _, cache = forward(model, t["kvcache.cond_latents"], jnp.zeros((2, 1)), jnp.zeros_like(text[0]), text[1],
                       return_kv=True, skip_crs_attn=True)
    t["kvcache.out"] = forward(model, t["kvcache.hidden_states"], t["kvcache.timestep"], *text, num_cond_latents=1,
                               kv_cache=cache)
    t["kvcache.block0.k"] = cache[0][0].transpose(0, 2, 1, 3)
    t["kvcache.block0.v"] = cache[1][0].transpose(0, 2, 1, 3)
    with_lora = nnx.clone(model)
    enable_loras(with_lora, [load_lora(root / "lora_r4.safetensors", multiplier=0.5)])
    t["lora.out"] = forward(with_lora, t["t2v.hidden_states"], t["t2v.timestep"], *text)
    sparse = nnx.clone(model)
    sparse.set_bsa(BSAParams(sparsity=0.5, cdf_threshold=None, chunk_3d_shape_q=(2, 2, 2), chunk_3d_shape_k=(2, 2, 2)))
    t["bsa.out"] = forward(sparse, t["bsa.hidden_states"], jnp.asarray([250.0]), text[0][1:], text[1][1:])
    write_safetensors(root / "dit_cases.safetensors", {k: np.asarray(v) for k, v in t.items()})
    cases = [
        {"name": "t2v", "call": "forward(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask)"},
        {"name": "i2v", "call": "same inputs as t2v; timestep [B,T]; num_cond_latents=2"},
        {"name": "kvcache", "call": "kv = forward(cond_latents, zeros[B,1], zeros text, return_kv=True, "
                                    "skip_crs_attn=True); out = forward(..., num_cond_latents=1, kv_cache_dict=kv)"},
        {"name": "lora", "call": "t2v inputs with lora_r4.safetensors applied (rank 4, multiplier 0.5)"},
        {"name": "bsa", "call": "enable_bsa with bsa_params {sparsity: 0.5, cdf_threshold: null, "
                                "chunk_3d_shape_q/k: [2,2,2]}; batch 1; t2v text inputs of item 1; timestep [250]"},
    ]
    (root / "dit_cases.json").write_text(json.dumps({"config": config, "cases": cases}))
    return root


def test_dit_group_reads_sizes_and_values_from_the_folder(other_fixtures, capsys):
    assert parity_cli.main(["--fixtures", str(other_fixtures), "--only", "dit"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [LINE.match(line).group(2) for line in lines[:-1]] == ["t2v", "i2v", "kvcache", "lora", "bsa"]
    assert lines[-1] == "5 passed, 0 failed, 0 skipped"


def test_dit_group_fails_on_a_wrong_reference(other_fixtures, tmp_path, capsys):
    folder = tmp_path / "wrong"
    folder.mkdir()
    for entry in other_fixtures.iterdir():
        if entry.name != "dit_cases.safetensors":
            (folder / entry.name).symlink_to(entry)
    from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
    ckpt = SafetensorsCheckpoint(other_fixtures / "dit_cases.safetensors")
    tensors = {n: np.array(ckpt.read(n)) for n in ckpt.names()}
    tensors["i2v.out"] = tensors["i2v.out"] * 1.01
    del tensors["bsa.out"]
    write_safetensors(folder / "dit_cases.safetensors", tensors)
    results = {r.name: r for r in dit_group.run(folder, "float32")}
    assert results["t2v"].status == "PASS"
    assert results["i2v"].status == "FAIL" and 5e-3 < results["i2v"].rel_l2 < 2e-2
    assert results["bsa"].status == "FAIL" and "bsa.out" in results["bsa"].note


def test_a_group_without_cases_fails(monkeypatch, tmp_path, capsys):
    """An empty case list compared nothing: a FAIL line naming the group, and a non-zero exit even when the other
    groups pass (here the real `bsa` group on a `bsa_cases.json` of `[]`)."""
    from tests.parity.test_fixture_set import SHIPPED_FIXTURES

    _fake_group(monkeypatch, "good", lambda fixtures, dtype: [CaseResult("a", 1e-6, 1e-4, "PASS")])
    (tmp_path / "bsa_cases.json").write_text("[]")
    (tmp_path / "bsa_cases.safetensors").symlink_to(SHIPPED_FIXTURES / "bsa_cases.safetensors")
    assert parity_cli.main(["--fixtures", str(tmp_path), "--only", "good,bsa"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert LINE.match(lines[1]).group(1, 2, 5) == ("bsa", "*", "FAIL")
    assert "group bsa: no cases in the fixtures" in lines[1]
    assert lines[-1] == "1 passed, 1 failed, 0 skipped"


def test_sample_group_runs_every_case_of_a_task(tmp_path):
    """A second `sample.t2v_*` tensor is a case of its own, not one that replaces the first (here a wrong one,
    which must show as a FAIL under its own name)."""
    from safetensors.numpy import load_file, save_file

    from longcat_jax.parity import sample as sample_group
    from tests.parity.test_fixture_set import SHIPPED_FIXTURES

    for name in ("dit", "pipeline_cases.json"):
        (tmp_path / name).symlink_to(SHIPPED_FIXTURES / name)
    tensors = load_file(str(SHIPPED_FIXTURES / "pipeline_cases.safetensors"))
    tensors["sample.t2v_cfg4_2steps"] = tensors["sample.t2v_cfg4_4steps"] * 1.5  # not what 2 steps give
    save_file(tensors, str(tmp_path / "pipeline_cases.safetensors"))
    results = {r.name: r for r in sample_group.run(tmp_path, "float32")}
    assert list(results) == ["sample.t2v_cfg4_2steps", "sample.t2v_cfg4_4steps", "sample.i2v_4steps"]
    assert results["sample.t2v_cfg4_2steps"].status == "FAIL" and results["sample.t2v_cfg4_2steps"].note == (
        "2 steps, guidance 4")
    assert results["sample.t2v_cfg4_4steps"].status == "PASS" and results["sample.i2v_4steps"].status == "PASS"
