"""The reference fixtures shipped in tests/fixtures/longcat_ref: found by default, overridden by LONGCAT_FIXTURES,
complete (every BSA case kind of the full set), reproducible by tools/trim_fixtures.py, and kept out of the wheel."""

import filecmp
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

import longcat_jax.parity.__main__ as parity_cli
from longcat_jax.parity.bsa import read_cases
from longcat_jax.parity.fixtures import FIXTURES_ENV, REPOSITORY_FIXTURES, resolve_fixtures_dir

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_FIXTURES = ROOT / "tests" / "fixtures" / "longcat_ref"
FULL_SET = ROOT.parent / "shared" / "fixtures" / "longcat_ref"


def test_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv(FIXTURES_ENV, raising=False)
    assert resolve_fixtures_dir() == REPOSITORY_FIXTURES
    monkeypatch.setenv(FIXTURES_ENV, "")
    assert resolve_fixtures_dir() == REPOSITORY_FIXTURES
    monkeypatch.setenv(FIXTURES_ENV, str(tmp_path))
    assert resolve_fixtures_dir() == tmp_path
    assert resolve_fixtures_dir(tmp_path / "given") == tmp_path / "given"


def test_cli_without_a_flag_runs_on_the_shipped_set(monkeypatch, capsys):
    monkeypatch.delenv(FIXTURES_ENV, raising=False)
    assert REPOSITORY_FIXTURES == SHIPPED_FIXTURES
    assert parity_cli.main(["--only", "scheduler"]) == 0
    out, err = capsys.readouterr()
    assert f"fixtures: {SHIPPED_FIXTURES}" in err
    passed, rest = out.strip().splitlines()[-1].split(" passed, ")
    assert int(passed) > 0 and rest == "0 failed, 0 skipped"


def test_cli_refuses_a_missing_folder_naming_the_fix(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(FIXTURES_ENV, str(tmp_path / "absent"))
    with pytest.raises(SystemExit) as exit_info:
        parity_cli.main(["--only", "scheduler"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert str(tmp_path / "absent") in err and "--fixtures DIR" in err and FIXTURES_ENV in err


def test_shipped_bsa_cases_cover_every_case_kind():
    kinds = set()
    for name, params, latent_q, latent_k, arrays in read_cases(SHIPPED_FIXTURES):
        batch, _, heads, head_dim = arrays["q"].shape  # [B, S, H, D]
        kinds.add({(True, False): "topk", (False, True): "cdf", (True, True): "topk+cdf"}[
            (params.sparsity is not None, params.cdf_threshold is not None)])
        kinds |= {kind for kind, present in [
            ("chunks of 128 tokens", params.chunk_size_k == 128),
            ("q chunk shape != k chunk shape", params.chunk_3d_shape_q != params.chunk_3d_shape_k),
            ("q shorter than k", latent_q != latent_k),
            ("head_dim 128", head_dim == 128),
            ("batch of 2", batch == 2),
        ] if present}
        assert arrays["block_mask"].shape[:2] == (batch, heads), name
    assert kinds == {"topk", "cdf", "topk+cdf", "chunks of 128 tokens", "q chunk shape != k chunk shape",
                     "q shorter than k", "head_dim 128", "batch of 2"}


@pytest.mark.skipif(not FULL_SET.is_dir(), reason=f"the full fixture set {FULL_SET} is not beside the repository")
def test_trim_script_reproduces_the_shipped_set(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "tools" / "trim_fixtures.py"), "--source", str(FULL_SET),
                    "--dest", str(tmp_path)], check=True, capture_output=True)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    shipped = sorted(p.relative_to(SHIPPED_FIXTURES) for p in SHIPPED_FIXTURES.rglob("*") if p.is_file())
    assert sorted([*written, Path("README.md")]) == shipped  # the README is written by hand
    for path in written:
        assert filecmp.cmp(tmp_path / path, SHIPPED_FIXTURES / path, shallow=False), path


def test_wheel_packages_leave_the_fixtures_out():
    # package data (`*.json`) is taken only from the packages found, so no fixture file can ride along
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not [pattern for pattern in include for name in ("tests", "tests.fixtures", "tests.parity")
                if fnmatch(name, pattern)]
