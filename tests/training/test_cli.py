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
