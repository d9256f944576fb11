"""BSA presets by name: shipped inside the package (so a wheel has them), read by `--bsa-config NAME` from any
folder, a local file of the same name first, an unknown name refused with the list; the repository's
`configs/bsa/` is the same folder."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from longcat_jax import generate
from longcat_jax.bsa_config import parse_bsa_config, read_bsa_config
from longcat_jax.configs import bsa_preset_files, short_preset_names
from longcat_jax.errors import ConfigError
from longcat_jax.pipelines.tasks import plan_run
from tests.helpers.xla_flags import subprocess_xla_flags

ROOT = Path(__file__).resolve().parents[2]
PACKAGED = ROOT / "longcat_jax" / "configs" / "bsa"
# The names the BSA guide and the issue promise, with the file each stands for.
PROMISED = {
    "balanced": "config_720p_balanced.json",
    "quality": "config_720p_quality.json",
    "fast": "config_720p_fast.json",
    "adaptive": "config_720p_adaptive.json",
    "long_video": "config_long_video.json",
    "480p_no_bsa": "config_480p_no_bsa.json",
}


def _file_params(file_name: str):
    return parse_bsa_config(json.loads((PACKAGED / file_name).read_text()), source=file_name)


@pytest.mark.parametrize(("name", "file_name"), PROMISED.items())
def test_every_promised_name_and_file_name_reads_its_preset(name, file_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository: no relative path could find the file
    expected = _file_params(file_name)
    for spelling in (name, file_name, file_name.removesuffix(".json")):
        assert read_bsa_config(spelling) == expected, spelling
    assert short_preset_names()[name] == file_name


def test_the_package_ships_exactly_the_repository_presets():
    assert sorted(bsa_preset_files()) == sorted(PROMISED.values())
    assert (ROOT / "configs" / "bsa").resolve() == PACKAGED.resolve()  # one copy: configs/bsa links to it


def test_an_existing_file_wins_over_the_preset_of_its_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = {"enable_bsa": True, "bsa_params": {"sparsity": 0.5}}
    Path("config_720p_balanced.json").write_text(json.dumps(mine))
    assert read_bsa_config("config_720p_balanced.json").sparsity == 0.5
    assert read_bsa_config("balanced").sparsity == 0.9375


def test_an_unknown_name_is_refused_with_the_list_of_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="not found") as err:
        read_bsa_config("balancd")
    for name, file_name in PROMISED.items():
        assert f"{name} ({file_name})" in str(err.value)


def test_cli_takes_a_preset_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = plan_run(generate.parse_request(["--bsa-config", "long_video", "--height", "64", "--width", "64",
                                            "--num-frames", "29"]))
    assert plan.setup.generation.bsa == _file_params("config_long_video.json")
    with pytest.raises(ConfigError, match="balanced \\(config_720p_balanced.json\\)"):
        plan_run(generate.parse_request(["--bsa-config", "no_such_preset"]))


@pytest.mark.slow
def test_a_built_wheel_carries_the_presets_and_the_examples_run_from_it(tmp_path):
    """A non-editable install: the wheel built from this tree, installed with --target, imported from outside the
    repository; example 5 of examples/bsa_usage.py (which reads the `adaptive` preset by name) runs on it and reports
    one row per DiT layer with a block count within the possible range (its only run in the suite)."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(wheels)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("longcat_jax-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {Path(name).name for name in archive.namelist() if name.startswith("longcat_jax/configs/bsa/")}
    assert shipped == set(PROMISED.values())
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(site), "TQDM_DISABLE": "1", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": subprocess_xla_flags()}
    check = subprocess.run(
        [sys.executable, "-c", "import longcat_jax, sys; from longcat_jax.bsa_config import read_bsa_config; "
         "print(longcat_jax.__file__); print(read_bsa_config('fast').sparsity)"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    where, sparsity = check.stdout.split()
    assert Path(where).is_relative_to(site) and float(sparsity) == 0.96875
    example = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "bsa_usage.py"), "--example", "5", "--steps", "1",
         "--output-dir", str(tmp_path / "outputs")],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert example.returncode == 0, example.stderr[-3000:]
    rows = [line.split() for line in example.stdout.splitlines() if line[:1].isdigit()]
    assert [row[0] for row in rows] == ["0", "1"]  # one row per layer of the built-in DiT
    for _, kept, total, _density in rows:  # the mean kept key blocks per query block, within what there is
        assert 1.0 <= float(kept) <= int(total)
