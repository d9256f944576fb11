"""`python -m longcat_jax.train`: mistakes are refused with the fix named and exit status 2, before any model loads."""

import json
import logging
import re

import pytest

from longcat_jax.train import main


def _write(tmp_path, **config):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"data": {"folder": str(tmp_path / "clips")}, "output_dir": str(tmp_path / "out"),
                                **config}))
    return str(path)


@pytest.mark.parametrize(
    ("config", "args", "message"),
    [
        ({"training": {"steps": "many"}}, [], "'training.steps' must be an integer"),
        ({"optimiser": {}}, [], "unknown key 'optimiser'"),
        ({}, [], "no prepared data in .*--prepare"),
        ({}, ["--prepare"], "data folder .* not found"),
        ({}, ["--until-step", "0"], "--until-step must be a positive"),
    ],
)
def test_mistakes_exit_with_status_2_and_the_fix(tmp_path, caplog, config, args, message):
    with caplog.at_level(logging.ERROR, logger="longcat_jax.train"):
        assert main(["--config", _write(tmp_path, **config), *args]) == 2
    assert caplog.records
    assert re.search(message, caplog.records[-1].getMessage()), caplog.records[-1].getMessage()


def test_prepare_with_a_missing_model_folder_names_the_config_key(tmp_path, caplog):
    # The checkpoint check's own message names generate's --model-path, an option this command does not have.
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "clip.mp4").write_bytes(b"not decoded: the model folder is checked first")
    (tmp_path / "clips" / "clip.txt").write_text("a caption")
    with caplog.at_level(logging.ERROR, logger="longcat_jax.train"):
        assert main(["--config", _write(tmp_path, model_path=str(tmp_path / "LongCat-Video")), "--prepare"]) == 2
    message = caplog.records[-1].getMessage()
    assert "set 'model_path' in the config" in message and "--model-path" not in message, message
