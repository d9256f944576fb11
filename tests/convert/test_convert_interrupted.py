"""An interrupted conversion can be resumed (`--resume` keeps the finished chunks) or started again; SIGINT,
SIGTERM and a full disk end with one line and no traceback, and never leave an empty destination folder; a
destination holding anything else is refused with what is there and what to do."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from convert.__main__ import main as convert_main
from longcat_jax.checkpoint import disk, orbax_chunks
from longcat_jax.checkpoint.orbax_chunks import group_of, is_converted, iter_part
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.params import dit_tensors
from tests.helpers.dit_checkpoints import dit_config, write_original_dit

REPO = Path(__file__).resolve().parents[2]
CONFIG = dit_config(hidden_size=64, depth=6, num_heads=2)


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    write_original_dit(root / "dit", CONFIG)
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text('{"shift": 1.0}')
    return root


class _Saves:
    """Counts chunk saves and raises `error` at save number `fail_at` (1-based)."""

    def __init__(self, monkeypatch, fail_at=None, error=None):
        self.count, self.fail_at, self.error = 0, fail_at, error
        real = orbax_chunks._save_chunk

        def save(*args):
            self.count += 1
            if self.count == self.fail_at:
                raise self.error
            real(*args)

        monkeypatch.setattr(orbax_chunks, "_save_chunk", save)


def _args(src, dst, *more):
    return [str(src), str(dst), "-q", "--allow-incomplete", *more]


def _assert_one_line(err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]


def _source_tensors(src):
    return dict(dit_tensors(SafetensorsCheckpoint(src / "dit"), DiTConfig.from_json(src / "dit" / "config.json")))


def _chunk_count(src) -> int:
    """One chunk per group: each block, then each top-level module."""
    return len({group_of(path) for path in _source_tensors(src)})


def _assert_same_as_source(src, dst):
    want = _source_tensors(src)
    got = dict(iter_part(dst / "dit"))
    assert got.keys() == want.keys()
    for path, array in want.items():
        np.testing.assert_array_equal(got[path], array)


def test_resume_continues_after_the_finished_chunks(src, tmp_path, monkeypatch, capsys):
    dst = tmp_path / "dst"
    _Saves(monkeypatch, fail_at=4, error=KeyboardInterrupt())
    assert convert_main(_args(src, dst)) == 130
    _assert_one_line(capsys.readouterr().err, "interrupted", "--resume")
    assert sorted(p.name for p in (dst / "dit.partial" / "chunks").iterdir()) == ["00000", "00001", "00002"]
    saves = _Saves(monkeypatch)
    assert convert_main(_args(src, dst, "--resume")) == 0
    assert saves.count == _chunk_count(src) - 3
    _assert_same_as_source(src, dst)
    assert sorted(p.name for p in dst.iterdir()) == ["dit", "scheduler"]


def test_resume_keeps_finished_parts_and_refuses_a_changed_source(src, tmp_path, monkeypatch, capsys):
    dst = tmp_path / "dst"
    (src / "tokenizer").mkdir()
    (src / "tokenizer" / "spiece.model").write_bytes(b"tokenizer")
    _Saves(monkeypatch)
    real_copytree = __import__("shutil").copytree

    def interrupted_copy(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("convert.api.shutil.copytree", interrupted_copy)
    assert convert_main(_args(src, dst)) == 130
    _assert_one_line(capsys.readouterr().err, "finished: dit", "--resume")
    assert is_converted(dst / "dit")
    monkeypatch.setattr("convert.api.shutil.copytree", real_copytree)
    os.utime(src / "dit" / "config.json", ns=(1, 1))
    assert convert_main(_args(src, dst, "--resume")) == 1
    _assert_one_line(capsys.readouterr().err, "source changed", "dit/config.json", "without --resume")
    saves = _Saves(monkeypatch)
    (src / "dit" / "config.json").touch()
    assert convert_main(_args(src, dst)) == 0  # without --resume: cleared and started again
    assert saves.count == _chunk_count(src)
    assert sorted(p.name for p in dst.iterdir()) == ["dit", "scheduler", "tokenizer"]


def test_rerun_without_resume_clears_the_unfinished_state_and_starts_again(src, tmp_path, monkeypatch, caplog):
    dst = tmp_path / "dst"
    _Saves(monkeypatch, fail_at=3, error=KeyboardInterrupt())
    assert convert_main(_args(src, dst)) == 130
    saves = _Saves(monkeypatch)
    assert convert_main(_args(src, dst)) == 0
    assert saves.count == _chunk_count(src)
    assert "--resume" in caplog.text
    _assert_same_as_source(src, dst)


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_full_disk_ends_with_one_line(src, tmp_path, monkeypatch, capsys, fail_at):
    dst = tmp_path / "dst"
    _Saves(monkeypatch, fail_at=fail_at, error=OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert convert_main(_args(src, dst)) == 1
    _assert_one_line(capsys.readouterr().err, "no space left on device", "--resume")
    if fail_at == 1:
        assert not dst.exists(), "nothing was finished, so no folder may be left"
    else:
        _Saves(monkeypatch)
        assert convert_main(_args(src, dst, "--resume")) == 0
        _assert_same_as_source(src, dst)


def test_too_little_free_space_is_refused_before_writing(src, tmp_path, monkeypatch, capsys):
    needed = SafetensorsCheckpoint(src / "dit").nbytes()
    monkeypatch.setattr(disk, "free_bytes", lambda path: needed // 2)
    assert convert_main(_args(src, tmp_path / "dst")) == 1
    _assert_one_line(capsys.readouterr().err, "not enough free space for the conversion", "MiB are free")
    assert not (tmp_path / "dst").exists()
    monkeypatch.setattr(disk, "free_bytes", lambda path: needed + 1024)  # enough in all, not with a chunk's margin
    assert convert_main(_args(src, tmp_path / "dst")) == 1
    _assert_one_line(capsys.readouterr().err, "not enough free space for chunk 00000")
    assert not (tmp_path / "dst").exists()


def test_an_interrupt_before_the_first_chunk_leaves_no_folder(src, tmp_path, monkeypatch, capsys):
    _Saves(monkeypatch, fail_at=1, error=KeyboardInterrupt())
    assert convert_main(_args(src, tmp_path / "dst")) == 130
    _assert_one_line(capsys.readouterr().err, "interrupted")
    assert not (tmp_path / "dst").exists()
    (tmp_path / "empty").mkdir()
    _Saves(monkeypatch, fail_at=1, error=KeyboardInterrupt())
    assert convert_main(_args(src, tmp_path / "empty")) == 130
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir()), "a folder the user made stays"


def test_a_non_empty_destination_is_refused_saying_what_is_there(src, tmp_path, monkeypatch, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert convert_main(_args(src, foreign)) == 1
    _assert_one_line(capsys.readouterr().err, "notes.txt", "did not write", "new or empty folder")
    assert convert_main(_args(src, foreign, "--resume")) == 1
    _assert_one_line(capsys.readouterr().err, "no unfinished conversion", "notes.txt")

    done = tmp_path / "done"
    assert convert_main(_args(src, done)) == 0
    assert convert_main(_args(src, done)) == 1
    _assert_one_line(capsys.readouterr().err, "finished conversion", "dit, scheduler", "--model-path")

    unfinished = tmp_path / "unfinished"
    _Saves(monkeypatch, fail_at=2, error=KeyboardInterrupt())
    assert convert_main(_args(src, unfinished)) == 130
    capsys.readouterr()
    (unfinished / "notes.txt").write_text("mine")
    assert convert_main(_args(src, unfinished)) == 1
    _assert_one_line(capsys.readouterr().err, "unfinished conversion", "notes.txt", "did not write")
    assert (unfinished / "notes.txt").exists() and (unfinished / "dit.partial").is_dir()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_command_with_one_line(tmp_path, signum):
    """The signal comes while chunks are being written (after the first, before the last of 12)."""
    src = tmp_path / "src"
    write_original_dit(src / "dit", dit_config(hidden_size=64, depth=8, num_heads=2))
    dst = tmp_path / "dst"
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen([sys.executable, "-m", "convert", *_args(src, dst)], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (dst / "dit.partial" / orbax_chunks.PROGRESS_NAME).exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.005)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, (out, err)
    _assert_one_line(err, "interrupted", "--resume")
    assert (dst / "dit.partial" / orbax_chunks.PROGRESS_NAME).is_file()
    if signum == signal.SIGINT:
        assert convert_main(_args(src, dst, "--resume")) == 0
        assert is_converted(dst / "dit")
