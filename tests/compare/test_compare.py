"""`python -m longcat_jax.compare` and the PSNR/SSIM behind it, on synthetic videos whose answers are known."""

import json
import math

import numpy as np
import pytest

from longcat_jax import metrics
from longcat_jax.compare import compare_frames, compare_videos
from longcat_jax.compare.__main__ import main
from longcat_jax.errors import InputError
from longcat_jax.metrics import psnr, ssim
from longcat_jax.video_io import write_mp4, write_npz

H, W, F = 48, 64, 9


def moving_video(frames=F, step=3, seed=0) -> np.ndarray:
    """Smooth colour pattern moving `step` pixels per frame, values in [40, 215] (no clipping under small noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    phases = rng.uniform(0, 2 * np.pi, 3)
    video = []
    for t in range(frames):
        channels = [128 + 87 * np.sin((x + step * t) / 5.0 + p) * np.cos(y / 7.0 - p) for p in phases]
        video.append(np.stack(channels, axis=-1))
    return np.round(np.asarray(video)).astype(np.uint8)


def brute_force_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM by its definition, window by window in float64 (the reference for `metrics.ssim`)."""
    offsets = np.arange(-5, 6)
    g = np.exp(-0.5 * (offsets / 1.5) ** 2)
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for c in range(a.shape[2]):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
        for i in range(a.shape[0] - 10):
            for j in range(a.shape[1] - 10):
                px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
                mx, my = (window * px).sum(), (window * py).sum()
                vx, vy = (window * px * px).sum() - mx**2, (window * py * py).sum() - my**2
                cov = (window * px * py).sum() - mx * my
                values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_and_psnr_match_their_definitions():
    rng = np.random.default_rng(1)
    a = moving_video(1)[0][:24, :20]
    b = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, b) == pytest.approx(brute_force_ssim(a, b), abs=1e-5)
    assert ssim(a[..., 0], b[..., 0]) == pytest.approx(brute_force_ssim(a[..., :1], b[..., :1]), abs=1e-5)
    diff = a.astype(np.float64) - b
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / np.mean(diff**2)), rel=1e-12)
    assert ssim(a, a) == 1.0 and psnr(a, a) == math.inf
    with pytest.raises(ValueError, match="at least 11 pixels"):
        ssim(a[:8], b[:8])
    with pytest.raises(ValueError, match="one shape"):
        ssim(a, b[:-1])


def _wang_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s SSIM in float64, written out independently: an 11x11 Gaussian window (sigma 1.5) at every
    position where it lies inside the frame, population (co)variances, channels averaged."""
    taps = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    window = np.outer(taps, taps) / np.outer(taps, taps).sum()
    a, b = a.astype(np.float64), b.astype(np.float64)
    views = [np.lib.stride_tricks.sliding_window_view(x, (11, 11), axis=(0, 1)) for x in (a, b, a * a, b * b, a * b)]
    mu_a, mu_b, aa, bb, ab = (np.einsum("hwcij,ij->hwc", view, window) for view in views)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    cov, var_a, var_b = ab - mu_a * mu_b, aa - mu_a**2, bb - mu_b**2
    return float(np.mean((2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))))


def test_ssim_is_scikit_images_with_population_covariance():
    """What metrics' docstring (and the README) claim: ours is Wang et al.'s SSIM (checked always, against a float64
    computation written out here), which scikit-image gives only with use_sample_covariance=False; its default
    (sample covariance, 121/120) differs (checked where scikit-image is installed)."""
    assert "gaussian_weights=True, use_sample_covariance=False" in metrics.__doc__
    rng = np.random.default_rng(3)
    a = moving_video(1)[0]
    b = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, b) == pytest.approx(_wang_ssim(a, b), abs=1e-5)
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    same = dict(channel_axis=-1, data_range=255, gaussian_weights=True)
    assert ssim(a, b) == pytest.approx(structural_similarity(a, b, use_sample_covariance=False, **same), abs=1e-6)
    assert abs(ssim(a, b) - structural_similarity(a, b, **same)) > 1e-5


def test_identical_videos_score_inf_psnr_and_ssim_one(tmp_path):
    video = moving_video()
    write_mp4(tmp_path / "a.mp4", video, fps=15)
    write_mp4(tmp_path / "b.mp4", video, fps=15)  # the same encode of the same frames decodes identically
    result = compare_videos(tmp_path / "a.mp4", tmp_path / "b.mp4")
    assert len(result.frames) == F and result.size == (H, W)
    assert result.psnr == math.inf and result.ssim == 1.0
    assert all(f.psnr == math.inf and f.ssim == 1.0 for f in result.frames)


def test_gaussian_noise_gives_the_analytic_psnr(tmp_path):
    """b = a + round(N(0, sigma^2)): MSE = sigma^2 + 1/12 (the rounding), PSNR = 10 log10(255^2 / MSE)."""
    sigma = 5.0
    a = moving_video(frames=13)
    rng = np.random.default_rng(2)
    b = (a + np.round(rng.normal(0, sigma, a.shape))).astype(np.uint8)  # values stay inside [0, 255]
    write_npz(tmp_path / "a.npz", a, 15)
    write_npz(tmp_path / "b.npz", b, 15)
    result = compare_videos(tmp_path / "a.npz", tmp_path / "b.npz")
    analytic = 10 * np.log10(255**2 / (sigma**2 + 1 / 12))
    assert result.psnr == pytest.approx(analytic, abs=0.05)
    assert all(abs(f.psnr - analytic) < 0.3 for f in result.frames)
    # Stronger noise: lower PSNR and SSIM, by the analytic PSNR difference.
    louder = (a.astype(np.int64) + np.round(rng.normal(0, 2 * sigma, a.shape))).clip(0, 255).astype(np.uint8)
    worse = compare_frames(a, louder)
    assert worse.psnr == pytest.approx(10 * np.log10(255**2 / (4 * sigma**2 + 1 / 12)), abs=0.1)
    assert worse.ssim < result.ssim < 1.0


def test_a_one_frame_shift_shows_on_the_shifted_frames():
    a = moving_video()
    b = np.concatenate([a[:4], a[3:-1]])  # frame 4 repeats frame 3; frames 4.. lag by one
    result = compare_frames(a, b)
    assert [f.psnr == math.inf for f in result.frames] == [True] * 4 + [False] * (F - 4)
    shifted = [f.ssim for f in result.frames[4:]]
    assert max(shifted) < 0.9 and result.worst_frame.index >= 4
    assert result.ssim == pytest.approx((4 + sum(shifted)) / F)


def test_mismatched_videos_are_refused(tmp_path, caplog):
    a = moving_video()
    with pytest.raises(InputError, match=r"frame sizes differ: A is 64x48, B is 32x48"):
        compare_frames(a, a[:, :, :32])
    with pytest.raises(InputError, match=r"frame counts differ: A has 9, B has 7; pass --allow-length-mismatch"):
        compare_frames(a, a[:7])
    result = compare_frames(a, a[:7], allow_length_mismatch=True)
    assert len(result.frames) == 7 and (result.frames_a, result.frames_b) == (9, 7)
    assert "comparing the first 7" in caplog.text
    np.savez(tmp_path / "bad.npz", video=a)
    with pytest.raises(InputError, match="holds no 'frames' or 'fps' array"):
        compare_videos(tmp_path / "bad.npz", tmp_path / "bad.npz")
    with pytest.raises(InputError, match="not found"):
        compare_videos(tmp_path / "missing.mp4", tmp_path / "bad.npz")


def test_cli_prints_and_writes_json(tmp_path, capsys):
    a = moving_video()
    b = np.concatenate([a[:4], a[3:-1]])
    write_npz(tmp_path / "a.npz", a, 15)
    write_npz(tmp_path / "b.npz", b, 15)
    assert main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--json", str(tmp_path / "out" / "s.json")]) == 0
    printed = capsys.readouterr().out
    assert "    0      inf  1.0000" in printed and "overall: PSNR" in printed
    scores = json.loads((tmp_path / "out" / "s.json").read_text())
    assert scores["frames_compared"] == F and scores["frames"][0]["psnr_db"] == "inf"
    assert (scores["fps_a"], scores["fps_b"]) == (15.0, 15.0)
    assert scores["overall"]["min_ssim_frame"] >= 4 and 0 < scores["overall"]["ssim"] < 1
    assert isinstance(scores["overall"]["psnr_db"], float)
    write_npz(tmp_path / "short.npz", a[:5], 15)
    assert main([str(tmp_path / "a.npz"), str(tmp_path / "short.npz")]) == 2
    assert "frame counts differ" in capsys.readouterr().err
    assert main([str(tmp_path / "a.npz"), str(tmp_path / "short.npz"), "--allow-length-mismatch", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("overall: PSNR")


def test_frame_rates_must_match(tmp_path, caplog, capsys):
    """Frame i of a 15 fps and of a 30 fps video are different moments: refused unless --allow-fps-mismatch, and
    both rates are reported (npz and mp4 alike)."""
    a = moving_video()
    write_npz(tmp_path / "a15.npz", a, 15)
    write_npz(tmp_path / "a30.npz", a, 30)
    write_npz(tmp_path / "b15.npz", a, 15.0)
    with pytest.raises(InputError, match=r"frame rates differ: \S+a15.npz is 15 fps, \S+a30.npz is 30 fps.*"
                                         r"resample one.*--allow-fps-mismatch"):
        compare_videos(tmp_path / "a15.npz", tmp_path / "a30.npz")
    assert compare_videos(tmp_path / "a15.npz", tmp_path / "b15.npz").fps_a == 15.0
    result = compare_videos(tmp_path / "a15.npz", tmp_path / "a30.npz", allow_fps_mismatch=True)
    assert (result.fps_a, result.fps_b) == (15.0, 30.0) and "frame rates differ (15 vs 30 fps)" in caplog.text
    write_mp4(tmp_path / "a15.mp4", a[:3], fps=15)
    write_mp4(tmp_path / "a30.mp4", a[:3], fps=30)
    with pytest.raises(InputError, match="frame rates differ"):
        compare_videos(tmp_path / "a15.mp4", tmp_path / "a30.mp4")

    assert main([str(tmp_path / "a15.npz"), str(tmp_path / "a30.npz")]) == 2
    assert "frame rates differ" in capsys.readouterr().err
    scores = tmp_path / "s.json"
    assert main([str(tmp_path / "a15.npz"), str(tmp_path / "a30.npz"), "--allow-fps-mismatch", "--quiet",
                 "--json", str(scores)]) == 0
    printed = capsys.readouterr().out
    assert "(9 frames, 15 fps)" in printed and "(9 frames, 30 fps)" in printed
    assert json.loads(scores.read_text())["fps_a"] == 15.0 and json.loads(scores.read_text())["fps_b"] == 30.0


def test_npz_without_a_frame_rate_is_refused(tmp_path):
    np.savez(tmp_path / "no_fps.npz", frames=moving_video())
    with pytest.raises(InputError, match="holds no 'fps' array; give an .npz written by --output-format npz"):
        compare_videos(tmp_path / "no_fps.npz", tmp_path / "no_fps.npz")
    np.savez(tmp_path / "bad_fps.npz", frames=moving_video(), fps=np.float64(0))
    with pytest.raises(InputError, match="'fps' must be one positive number"):
        compare_videos(tmp_path / "bad_fps.npz", tmp_path / "bad_fps.npz")


def test_frames_too_small_for_ssim_are_refused_before_scoring(tmp_path, capsys):
    small = moving_video()[:, :8, :10]
    with pytest.raises(InputError, match=r"are 10x8 \(width x height\); SSIM needs at least 11 pixels a side"):
        compare_frames(small, small)
    write_npz(tmp_path / "small.npz", small, 15)
    assert main([str(tmp_path / "small.npz"), str(tmp_path / "small.npz")]) == 2
    assert "SSIM needs at least 11 pixels" in capsys.readouterr().err


def test_an_unwritable_json_path_is_refused_before_comparing(tmp_path, monkeypatch, capsys):
    import longcat_jax.compare.__main__ as cli

    def never(*args, **kwargs):
        raise AssertionError("compared before the --json path was checked")

    monkeypatch.setattr(cli, "compare_videos", never)
    (tmp_path / "file").write_text("")
    for bad, message in ((tmp_path / "file" / "s.json", "is a file, not a folder"), (tmp_path, "is a folder")):
        assert main(["a.npz", "b.npz", "--json", str(bad)]) == 2
        assert message in capsys.readouterr().err


def test_the_json_is_written_atomically(tmp_path, monkeypatch, capsys):
    a = moving_video(frames=2)
    write_npz(tmp_path / "a.npz", a, 15)
    scores = tmp_path / "s.json"
    scores.write_text("earlier")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("longcat_jax.video_io.os.replace", full_disk)
    assert main([str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), "--json", str(scores)]) == 1
    assert "cannot write --json" in capsys.readouterr().err
    assert scores.read_text() == "earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "s.json"]


@pytest.mark.parametrize("fps_b", [30.0, 29.97, 30000 / 1001, 0.0])
def test_an_ntsc_rate_is_its_whole_number_and_a_rate_of_0_is_unknown(fps_b):
    """29.97 against 30 fps: a frame of drift in 1,000, compared; 0 fps is a file that gives no rate."""
    a = moving_video()
    result = compare_frames(a, a, fps_a=30.0, fps_b=fps_b)
    assert result.frames_a == len(a) and result.fps_b == (fps_b or None)  # 0 fps reported as unknown
