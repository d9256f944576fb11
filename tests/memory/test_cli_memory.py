"""`--max-device-memory` in the CLI, and runs that cannot fit refused by their estimate before any model loads."""

import logging

import pytest

from longcat_jax import generate
from longcat_jax.memory import run
from longcat_jax.pipelines import tasks
from longcat_jax.pipelines.pipeline import LongCatPipeline


@pytest.fixture
def no_loading(monkeypatch):
    """Any model load fails the test: refusals must come before it."""
    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(LongCatPipeline, "builtin", fail)
    monkeypatch.setattr(LongCatPipeline, "from_pretrained", fail)


def _refused(argv, tmp_path, caplog) -> str:
    with caplog.at_level(logging.ERROR):
        assert generate.main([*argv, "--output-path", str(tmp_path / "out.mp4")]) == 2
    assert not (tmp_path / "out.mp4").exists()
    return caplog.text


def test_a_size_the_device_cannot_hold_is_refused_with_the_largest_that_fits(no_loading, tmp_path, caplog):
    text = _refused(["--height", "4096", "--width", "4096"], tmp_path, caplog)
    assert "does not fit this device" in text and "generation denoising" in text
    assert "would fit at up to" in text and "a height of" in text


def test_a_height_of_100000_is_refused_before_loading(no_loading, tmp_path, caplog):
    text = _refused(["--height", "100000"], tmp_path, caplog)
    assert "--height" in text


@pytest.mark.parametrize("size", ["24G", "24", "lots", "0GiB"])
def test_a_bad_budget_is_refused_naming_the_flag(no_loading, tmp_path, caplog, size):
    assert "--max-device-memory" in _refused(["--max-device-memory", size], tmp_path, caplog)


@pytest.mark.parametrize("argv", [["--max-device-memory", "24"],
                                  ["--max-device-memory", "24GiB", "--context-parallel", "2"]])
def test_a_bad_budget_is_refused_before_the_checkpoint_is_fetched(no_loading, tmp_path, caplog, monkeypatch, argv):
    def fetch(*args, **kwargs):
        raise AssertionError("the checkpoint was fetched before the refusal")

    monkeypatch.setattr(tasks, "resolve_model_path", fetch)
    assert "--max-device-memory" in _refused(["--model-path", "meituan-longcat/LongCat-Video", *argv], tmp_path, caplog)


def test_fsdp_on_one_device_is_named_as_ignored(caplog):
    run._warn_fsdp_ignored.cache_clear()  # said once a process: another test of this worker may have said it
    with caplog.at_level(logging.WARNING):
        tasks.plan_run(generate.parse_request(["--fsdp", "--context-parallel", "1", "--num-inference-steps", "1"]))
    assert "--fsdp splits the weights over the devices of a run, and this run has one" in caplog.text


def test_a_budget_too_small_names_the_smallest_that_works(no_loading, tmp_path, caplog):
    text = _refused(["--max-device-memory", "8MiB", "--context-parallel", "1"], tmp_path, caplog)
    assert "does not fit the budget 8.00 MiB (--max-device-memory 8MiB)" in text
    assert "The smallest budget that holds it:" in text


def test_a_budget_is_for_one_device(no_loading, tmp_path, caplog):
    text = _refused(["--max-device-memory", "2GiB", "--context-parallel", "2"], tmp_path, caplog)
    assert "--context-parallel 1" in text


def test_a_run_within_a_budget_logs_its_plan_and_summary(tmp_path, caplog, capsys):
    argv = ["--max-device-memory", "1GiB", "--context-parallel", "1", "--height", "32", "--width", "32",
            "--num-frames", "1", "--num-inference-steps", "1", "--output-path", str(tmp_path / "out.mp4")]
    with caplog.at_level(logging.INFO):
        assert generate.main(argv) == 0
    assert "Memory plan: budget 1.00 GiB (--max-device-memory 1GiB)" in caplog.text
    assert "generation denoising" in caplog.text
    assert "memory budget 1.00 GiB" in capsys.readouterr().err
