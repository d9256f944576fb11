"""The output path is checked in the plan, before any model loads (issue 17): a name, a suffix, a writable folder
and the free space; a write that fails anyway (a full disk) ends with one line that says so, and leaves nothing."""

import errno
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from longcat_jax import generate, video_io
from longcat_jax.errors import InputError
from longcat_jax.output_path import H264_BYTES_PER_PIXEL, check_output_path, output_bytes
from longcat_jax.pipelines.tasks import plan_run
from longcat_jax.video_io import OutputError, write_frames, write_mp4, write_npz

SMALL = ("--height", "64", "--width", "64", "--num-frames", "5")



def _plan(*argv: str):
    return plan_run(generate.parse_request([*argv, *SMALL]))


def _frames(count=3, size=16):
    return np.random.default_rng(0).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_a_file_name_without_suffix_gets_the_formats(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        assert _plan("--output-path", str(tmp_path / "clip")).output_path == tmp_path / "clip.mp4"
    assert f"writing {tmp_path / 'clip.mp4'}" in caplog.text
    assert _plan("--output-path", str(tmp_path / "clip"), "--output-format", "npz").output_path == tmp_path / "clip.npz"
    assert _plan("--output-path", str(tmp_path / "clip.MP4")).output_path == tmp_path / "clip.MP4"
    assert _plan("--output-format", "frames", "--output-path", str(tmp_path / "pngs")).output_path == tmp_path / "pngs"
    missing = tmp_path / "new" / "folders" / "clip.mp4"  # missing folders are created when writing, not now
    assert _plan("--output-path", str(missing)).output_path == missing and not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "name, argv, message",
    [
        ("", (), "names no file"),
        ("clip.avi", (), r"ends in \.avi, but --output-format mp4 writes \.mp4"),
        ("clip.mp4", ("--output-format", "npz"), r"ends in \.mp4, but --output-format npz writes \.npz"),
        ("a_folder", (), "is a folder; give a file name in it"),
        ("a_file/clip.mp4", (), "a_file is a file, not a folder"),
        ("a_file", ("--output-format", "frames"), "is a file, and --output-format frames writes a folder"),
        ("a_folder", ("--output-format", "frames"), "holds files other than frame_"),
        ("clip.mp4", ("--output-format", "frames"), r"frames writes a folder of frame_\*\.png, but .* ends in \.mp4"),
    ],
)
def test_output_path_refusals_come_from_the_plan(tmp_path, monkeypatch, caplog, name, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_folder" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match=message):
        _plan("--output-path", name, *argv)

    def never(*_args, **_kwargs):
        raise AssertionError("the models were loaded")

    monkeypatch.setattr(generate, "run_plan", never)
    with caplog.at_level(logging.ERROR):
        assert generate.main(["--output-path", name, *argv, *SMALL]) == 2
    assert (tmp_path / "a_folder" / "notes.txt").read_text() == "keep me"


def test_a_read_only_folder_is_refused(tmp_path):
    """Run unprivileged (root writes anywhere): as root, in a child process that drops to the `nobody` user."""
    base = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's tmp_path is private to its owner
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        locked.chmod(0o555)
        refusal = f"cannot write {locked / 'clip.mp4'}: the folder {locked} is not writable"
        assert _refusal_as_unprivileged(locked / "clip.mp4") == refusal
        assert _refusal_as_unprivileged(locked / "sub" / "clip.mp4").startswith("cannot write")
    finally:
        (base / "locked").chmod(0o755)
        shutil.rmtree(base)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_no_file_can_be_made_in_is_refused_even_as_root():
    """/proc takes no new files, whoever asks (root included, whom permission bits let write anywhere)."""
    with pytest.raises(InputError, match=r"cannot write /proc/foo\.mp4: the folder /proc is not writable \(.*/proc: "):
        _plan("--output-path", "/proc/foo.mp4")


def _refusal_as_unprivileged(path: Path) -> str:
    """The start of check_output_path's refusal of `path` (up to ' (read-only'), as a user that is not root."""
    if os.geteuid() != 0:
        return _refusal(path)
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # JAX warns about fork; the child runs no JAX, only file-system calls
        child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe and exits at once
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, _refusal(path).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    os.waitpid(child, 0)
    return message


def _refusal(path: Path) -> str:
    try:
        check_output_path(path, "mp4")
    except InputError as err:
        return str(err).split(" (read-only")[0]
    return "accepted"


def test_free_space_is_checked_against_the_expected_size(tmp_path, monkeypatch, caplog):
    free = 10_000
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage._replace(free=free))
    with pytest.raises(InputError, match=r"needs? up to .* \(5 frames of 64x64\) and .* has 10\.0 KB free"):
        _plan("--output-path", str(tmp_path / "clip.mp4"))
    assert generate.main(["--output-path", str(tmp_path / "clip.mp4"), *SMALL]) == 2
    assert list(tmp_path.iterdir()) == []
    free = 10**9
    assert _plan("--output-path", str(tmp_path / "clip.mp4")).output_path == tmp_path / "clip.mp4"


def test_output_size_estimates_bound_what_is_written(tmp_path):
    """The estimate is an upper bound: noise (incompressible) written in each format stays below it."""
    frames = _frames(5, 64)
    mp4 = write_mp4(tmp_path / "noise.mp4", frames, fps=15)
    npz = write_npz(tmp_path / "noise.npz", frames, fps=15)
    folder = write_frames(tmp_path / "noise", frames)
    assert mp4.stat().st_size <= output_bytes("mp4", 5, 64, 64)
    assert mp4.stat().st_size > 0.5 * 5 * 64 * 64 * H264_BYTES_PER_PIXEL  # not a loose bound: noise is near it
    assert npz.stat().st_size <= output_bytes("npz", 5, 64, 64)
    assert sum(p.stat().st_size for p in folder.iterdir()) <= output_bytes("frames", 5, 64, 64)


def test_no_space_while_writing_npz_is_one_line(tmp_path, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full)
    with pytest.raises(OutputError, match=f"no space left on device writing {tmp_path / 'clip.npz'}"):
        write_npz(tmp_path / "clip.npz", _frames(), 15)
    assert list(tmp_path.iterdir()) == []


def test_no_space_while_writing_frames(tmp_path, monkeypatch):
    calls = []

    def full_after_two(*_args, **_kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(video_io.iio, "imwrite", full_after_two)
    with pytest.raises(OutputError, match="no space left on device writing"):
        write_frames(tmp_path / "pngs", _frames())
    assert list(tmp_path.iterdir()) == []


def test_ffmpeg_running_out_of_space_is_reported_not_put_in_place(tmp_path, monkeypatch):
    """ffmpeg fails only when it writes the mp4's index at the end; its error output says why. Stand-in: a
    program that reads the frames and fails as ffmpeg does on a full disk."""
    script = ("import sys; sys.stdin.buffer.read(); "
              "sys.stderr.write('[out#0/mp4] Error writing trailer: No space left on device\\n'); sys.exit(1)")
    monkeypatch.setattr(video_io, "h264_command", lambda *_args: [sys.executable, "-c", script])
    target = tmp_path / "clip.mp4"
    with pytest.raises(OutputError, match=f"no space left on device writing {target}"):
        write_mp4(target, _frames(), fps=15)
    assert list(tmp_path.iterdir()) == []
    crash = "import sys; sys.stdin.buffer.read(); sys.stderr.write('Unknown encoder libx264\\n'); sys.exit(1)"
    monkeypatch.setattr(video_io, "h264_command", lambda *_args: [sys.executable, "-c", crash])
    with pytest.raises(OutputError, match="ffmpeg exited with status 1: Unknown encoder libx264"):
        write_mp4(target, _frames(), fps=15)
    assert list(tmp_path.iterdir()) == []


def test_no_space_at_the_cli_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, caplog):
    def full(self, frame):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(video_io.H264Encoder, "write", full)
    output = tmp_path / "clip.mp4"
    with caplog.at_level(logging.ERROR):
        assert generate.main(["--output-path", str(output), "--num-inference-steps", "1", *SMALL]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(f"no space left on device writing {output}")
    assert list(tmp_path.iterdir()) == []


def test_frames_folder_permissions_follow_the_umask(tmp_path):
    mask = os.umask(0o027)
    try:
        folder = write_frames(tmp_path / "pngs", _frames())
    finally:
        os.umask(mask)
    assert folder.stat().st_mode & 0o777 == 0o750
    assert (folder / "frame_00000.png").stat().st_mode & 0o777 == 0o640


def test_frames_folder_of_other_files_is_never_replaced(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(InputError, match="holds files other than frame_"):
        write_frames(folder, _frames())
    assert (folder / "holiday.jpg").read_bytes() == b"precious"


def test_a_failed_frames_replacement_puts_the_old_folder_back(tmp_path, monkeypatch):
    folder = write_frames(tmp_path / "pngs", _frames(2))
    replace = os.replace

    def failing_second_move(source, target):
        if Path(target) == folder and ".partial" in str(source):
            raise KeyboardInterrupt
        replace(source, target)

    monkeypatch.setattr(video_io.os, "replace", failing_second_move)
    with pytest.raises(KeyboardInterrupt):
        write_frames(folder, _frames(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pngs"]  # no .partial, no .old left
    assert len(list(folder.iterdir())) == 2
