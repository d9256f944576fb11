"""Issue 23, workflows 4 and 5: `--bsa-sparsity` / `--bsa-cdf-threshold` replace the values of every stage that
runs BSA (from --bsa-config, the refinement's default or the checkpoint's dit/config.json), checked by the JSON's
rules and shown in each stage's log line; with no stage running BSA they are refused. Method 2 of the BSA guide (the
preset's two keys merged into an existing dit/config.json) turns BSA on for a checkpoint's generation stages."""

import json
import logging
from pathlib import Path

import pytest

from kernels import BSAParams
from longcat_jax import generate
from longcat_jax.bsa_config import read_bsa_config
from longcat_jax.errors import ConfigError, InputError
from longcat_jax.models.text_encoder.tiny_tokenizer import build_tiny_tokenizer
from longcat_jax.pipelines.tasks import plan_run

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "bsa"
BSA_SIZE = ("--height", "128", "--width", "256", "--num-frames", "13")  # token grid (4, 8, 16): 4x4x4 chunks fit


def _plan(*argv: str):
    return plan_run(generate.parse_request([*argv, "--context-parallel", "1"]))


def _bsa_lines(caplog, *argv: str) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="longcat_jax.pipelines.bsa"):
        _plan(*argv)
    return [r.getMessage() for r in caplog.records if r.name == "longcat_jax.pipelines.bsa"]


def test_sparsity_replaces_the_bsa_configs_and_the_log_shows_it(caplog):
    plan = _plan("--bsa-config", "balanced", "--bsa-sparsity", "0.9", *BSA_SIZE)
    assert plan.stages.generation.bsa == BSAParams(sparsity=0.9, chunk_3d_shape_q=(4, 4, 4), chunk_3d_shape_k=(4, 4, 4))
    assert _bsa_lines(caplog, "--bsa-config", "balanced", "--bsa-sparsity", "0.9", *BSA_SIZE) == [
        'BSA on for t2v: {"sparsity": 0.9, "cdf_threshold": null, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": '
        '[4, 4, 4]} (as asked (--bsa-config or the task\'s bsa option); --bsa-sparsity 0.9)'
    ]


def test_the_long_video_preset_keeps_its_chunks():
    plan = _plan("--bsa-config", "long_video", "--bsa-cdf-threshold", "0.9", "--height", "64", "--width", "64",
                 "--num-frames", "29")
    assert plan.stages.generation.bsa == BSAParams(sparsity=0.9375, cdf_threshold=0.9, chunk_3d_shape_q=(8, 4, 4),
                                                   chunk_3d_shape_k=(8, 4, 4))


def test_none_turns_a_rule_off():
    plan = _plan("--bsa-config", "balanced", "--bsa-sparsity", "none", "--bsa-cdf-threshold", "0.95", *BSA_SIZE)
    assert (plan.stages.generation.bsa.sparsity, plan.stages.generation.bsa.cdf_threshold) == (None, 0.95)
    plan = _plan("--bsa-config", "adaptive", "--bsa-sparsity", "0.5", *BSA_SIZE)  # both rules: the larger count wins
    assert (plan.stages.generation.bsa.sparsity, plan.stages.generation.bsa.cdf_threshold) == (0.5, 0.98)


def test_with_refine_only_the_stages_that_run_bsa_change(caplog):
    """The released stage 1 is dense (and says the override does not apply there); the refinement's default BSA
    (the checkpoint's bsa_params: the built-in model's sparsity 0.75) takes the override."""
    plan = _plan("--refine", "--bsa-cdf-threshold", "0.95")
    assert plan.stages.generation.bsa is None
    assert plan.stages.refinement.bsa == BSAParams(sparsity=0.75, cdf_threshold=0.95)
    lines = _bsa_lines(caplog, "--refine", "--bsa-cdf-threshold", "0.95")
    assert lines[0] == ("BSA off for t2v: dense attention (dit/config.json has enable_bsa false; --bsa-cdf-threshold "
                        "0.95 applies only to stages that run BSA)")
    assert lines[1].startswith('BSA on for refinement: {"sparsity": 0.75, "cdf_threshold": 0.95,')
    assert lines[1].endswith("(the refinement default: on, with the checkpoint's bsa_params; --bsa-cdf-threshold 0.95)")


@pytest.mark.parametrize("argv", [["--bsa-sparsity", "0.9"], ["--bsa-config", "480p_no_bsa", "--bsa-sparsity", "0.9"],
                                  ["--bsa-config", "balanced", "--num-frames", "1", "--bsa-cdf-threshold", "0.9"]])
def test_an_override_with_no_stage_running_bsa_is_refused_before_loading(argv, caplog, monkeypatch):
    monkeypatch.setattr(generate, "run_plan", lambda plan: pytest.fail("the run started"))
    with caplog.at_level(logging.ERROR):
        assert generate.main([*argv, "--context-parallel", "1"]) == 2
    assert "every stage of this run attends densely" in caplog.text
    assert "turn BSA on with --bsa-config NAME" in caplog.text


def test_bad_values_are_refused_by_the_jsons_rules_all_named():
    with pytest.raises(ConfigError) as err:
        _plan("--bsa-config", "balanced", "--bsa-sparsity", "1.5", "--bsa-cdf-threshold", "0", *BSA_SIZE)
    message = str(err.value)
    assert "--bsa-sparsity 1.5 --bsa-cdf-threshold 0" in message
    assert "sparsity must be in [0, 1), got 1.5" in message and "cdf_threshold must be in (0, 1], got 0.0" in message
    with pytest.raises(ConfigError, match="BSA needs a selection rule"):
        _plan("--bsa-sparsity", "none", "--bsa-cdf-threshold", "none", "--bsa-config", "balanced", *BSA_SIZE)
    with pytest.raises(InputError, match="BSA of the t2v stage with --bsa-cdf-threshold none: BSA needs a selection rule"):
        _plan("--bsa-config", "adaptive", "--bsa-cdf-threshold", "none", *BSA_SIZE)


def test_a_value_that_is_not_a_number_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as stop:
        generate.parse_request(["--bsa-sparsity", "most"])
    assert stop.value.code == 2
    assert "argument --bsa-sparsity: 'most' is neither a number nor 'none'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def method2_checkpoint(tmp_path_factory, fixtures_dir) -> Path:
    """The fixture checkpoint with the balanced preset's two keys merged into its dit/config.json (method 2)."""
    root = tmp_path_factory.mktemp("method2")
    for part in ("vae", "text_encoder"):
        (root / part).symlink_to(fixtures_dir / part)
    (root / "dit").mkdir()
    for path in (fixtures_dir / "dit").iterdir():
        if path.name != "config.json":
            (root / "dit" / path.name).symlink_to(path)
    config = json.loads((fixtures_dir / "dit" / "config.json").read_text())
    config.update(json.loads((PRESETS / "config_720p_balanced.json").read_text()))
    (root / "dit" / "config.json").write_text(json.dumps(config))
    build_tiny_tokenizer(root / "tokenizer")
    return root


def test_method_2_turns_bsa_on_for_the_checkpoints_generation(method2_checkpoint, caplog):
    argv = ("--model-path", str(method2_checkpoint), "--height", "64", "--width", "64", "--num-frames", "13")
    assert _plan(*argv).stages.generation.bsa == read_bsa_config("balanced")
    lines = _bsa_lines(caplog, *argv, "--bsa-sparsity", "0.96875")
    assert lines == ['BSA on for t2v: {"sparsity": 0.96875, "cdf_threshold": null, "chunk_3d_shape_q": [4, 4, 4], '
                     '"chunk_3d_shape_k": [4, 4, 4]} (dit/config.json has enable_bsa true; --bsa-sparsity 0.96875)']
