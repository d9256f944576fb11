"""Video and image files: mp4 round trip, atomic writes, npz / frames outputs, readers, pre- and post-processing."""

import logging
import os
import struct
import warnings
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import PIL.PngImagePlugin
import pytest

from longcat_jax.errors import InputError
from longcat_jax.video_io import (
    frames_at_fps,
    read_image,
    read_video,
    resize_align_corners,
    resize_frames,
    save_video,
    to_model_input,
    to_uint8_frames,
    upsample_for_refine,
    write_frames,
    write_mp4,
    write_npz,
)


def _gradient_frames(num_frames=9, height=32, width=48):
    """Smooth moving gradients: H.264 keeps them close to the input."""
    t, y, x = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width), indexing="ij")
    red = (x * 4 + t * 8) % 256
    green = (y * 6) % 256
    blue = np.full_like(red, 128)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)  # [F, H, W, 3]


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_mp4_round_trip(tmp_path):
    frames = _gradient_frames()
    path = write_mp4(tmp_path / "out" / "video.mp4", frames, fps=15)
    assert _leftovers(tmp_path / "out") == ["video.mp4"]
    back, fps = read_video(path)
    assert back.shape == frames.shape and fps == 15.0
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 8


def test_mp4_from_an_iterable_with_odd_size(tmp_path):
    frames = _gradient_frames(5, 33, 47)
    path = write_mp4(tmp_path / "odd.mp4", iter(frames), fps=30)
    back, fps = read_video(path)
    assert back.shape == (5, 34, 48, 3) and fps == 30.0  # padded to even sides for yuv420p


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_mp4_write_leaves_nothing(tmp_path, error):
    frames = _gradient_frames()

    def failing_frames():
        yield from frames[:3]
        raise error("stopped mid-write")

    with pytest.raises(error):
        write_mp4(tmp_path / "video.mp4", failing_frames(), fps=15)
    assert _leftovers(tmp_path) == []


def test_interrupted_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "video.mp4"
    write_mp4(target, _gradient_frames(5), fps=15)
    before = target.read_bytes()
    bad = [_gradient_frames(1)[0], np.zeros((8, 8, 3), np.uint8)]  # second frame of another size
    with pytest.raises(InputError, match="one size"):
        write_mp4(target, bad, fps=15)
    assert target.read_bytes() == before and _leftovers(tmp_path) == ["video.mp4"]


def test_mp4_refusals(tmp_path):
    with pytest.raises(InputError, match="no frames"):
        write_mp4(tmp_path / "empty.mp4", [], fps=15)
    with pytest.raises(InputError, match="uint8"):
        write_mp4(tmp_path / "float.mp4", np.zeros((2, 8, 8, 3), np.float32), fps=15)
    with pytest.raises(InputError, match="fps"):
        write_mp4(tmp_path / "fps.mp4", _gradient_frames(2), fps=0)
    assert _leftovers(tmp_path) == []


def test_npz_and_frames_outputs(tmp_path):
    frames = _gradient_frames(4, 16, 16)
    npz = save_video(tmp_path / "video.npz", frames, 15, output_format="npz")
    with np.load(npz) as data:
        np.testing.assert_array_equal(data["frames"], frames)
        assert float(data["fps"]) == 15.0
    folder = save_video(tmp_path / "frames", frames, 15, output_format="frames")
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"frame_{i:05d}.png" for i in range(4)]
    np.testing.assert_array_equal(read_image(folder / names[2]), frames[2])
    write_frames(folder, frames[:2])  # an existing folder is replaced whole
    assert len(list(folder.iterdir())) == 2
    assert _leftovers(tmp_path) == ["frames", "video.npz"]
    with pytest.raises(InputError, match="not a folder"):
        write_frames(npz, frames)
    with pytest.raises(InputError, match="output format"):
        save_video(tmp_path / "x.gif", frames, 15, output_format="gif")


def test_interrupted_npz_write_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_npz(tmp_path / "video.npz", _gradient_frames(2), 15)
    assert _leftovers(tmp_path) == []


def test_read_image_formats(tmp_path):
    rgb = _gradient_frames(1, 20, 30)[0]
    PIL.Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], axis=-1)
    PIL.Image.fromarray(rgba).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), rgb)  # alpha dropped, as PIL convert('RGB')
    PIL.Image.fromarray(rgb[..., 0]).save(tmp_path / "c.png")
    assert read_image(tmp_path / "c.png").shape == (20, 30, 3)
    PIL.Image.fromarray(rgb).save(tmp_path / "d.jpg", quality=95)
    jpeg = read_image(tmp_path / "d.jpg")
    assert jpeg.shape == (20, 30, 3) and np.abs(jpeg.astype(int) - rgb.astype(int)).mean() < 8


def _png16(path, samples):
    """Writes uint16 samples [H, W] (gray) or [H, W, 3] (RGB) as a 16-bit PNG (PIL writes 16-bit gray only)."""
    height, width = samples.shape[:2]
    color_type = 2 if samples.ndim == 3 else 0
    rows = samples.astype(">u2").reshape(height, -1).view(np.uint8)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)  # filter type 0 before each row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_16_bit_images_are_scaled_to_8_bits(tmp_path, monkeypatch):
    ramp = (np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)  # 0 .. 64,491
    want = np.rint(ramp / 257.0)
    PIL.Image.fromarray(ramp).save(tmp_path / "gray.png")  # PIL's I;16: clipped at 255 by an RGB conversion
    _png16(tmp_path / "gray_by_hand.png", ramp)
    for name in ("gray.png", "gray_by_hand.png"):
        gray = read_image(tmp_path / name)
        assert gray.shape == (48, 64, 3) and np.abs(gray.astype(float) - want[..., None]).max() <= 0.5
    with monkeypatch.context() as older_pillow:  # older Pillows open a 16-bit gray PNG as 32-bit "I"
        older_pillow.setitem(PIL.PngImagePlugin._MODES, (16, 0), ("I", "I;16B"))
        assert PIL.Image.open(tmp_path / "gray.png").mode == "I"
        assert np.abs(read_image(tmp_path / "gray.png").astype(float) - want[..., None]).max() <= 0.5
    color = np.stack([ramp, 65535 - ramp, np.full_like(ramp, 32768)], axis=-1)
    _png16(tmp_path / "rgb.png", color)
    rgb = read_image(tmp_path / "rgb.png")
    assert np.abs(rgb.astype(float) - color / 257.0).max() <= 1
    assert abs(rgb.mean() - color.mean() / 257) < 0.5
    PIL.Image.fromarray(ramp.astype(np.int32)).save(tmp_path / "deep.tif")  # 32-bit integers: no known range
    with pytest.raises(InputError, match=r"deep\.tif has I pixels .* save it as an 8- or 16-bit PNG"):
        read_image(tmp_path / "deep.tif")


def test_an_animation_is_not_an_image(tmp_path):
    frames = [PIL.Image.fromarray(frame) for frame in _gradient_frames(4, 20, 30)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(InputError, match=r"--image .*anim\.gif holds 4 frames .* --task continuation --video"):
        read_image(tmp_path / "anim.gif")
    frames[0].save(tmp_path / "camera.mpo", save_all=True, append_images=frames[1:2], format="MPO")
    still = read_image(tmp_path / "camera.mpo")  # a camera's multi-picture JPEG: the photo is its first image
    assert still.shape == (20, 30, 3) and np.abs(still.astype(int) - _gradient_frames(1, 20, 30)[0]).mean() < 8


def test_read_refusals(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="not found"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="cannot read image"):
        read_image(tmp_path / "text.png")
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(InputError, match="cannot read video") as refusal:
        read_video(tmp_path / "text.mp4")
    message = str(refusal.value)  # ffmpeg's last lines, without its banner of version and build configuration
    assert "Invalid data found when processing input" in message and message.count(";") <= 6
    assert "configuration:" not in message and "libavcodec" not in message and "\n" not in message


def test_model_range_conversions():
    video = np.array([-1.0, -2.0, 0.0, 1.0, 3.0], np.float32).reshape(1, 1, 1, 5).repeat(3, axis=0)  # [3, F, H, W]
    frames = to_uint8_frames(video)
    assert frames.shape == (1, 1, 5, 3)
    np.testing.assert_array_equal(frames[0, 0, :, 0], [0, 0, 127, 255, 255])  # truncation, as the original demos
    np.testing.assert_array_equal(to_uint8_frames(video[None]), frames)
    on_device = to_uint8_frames(jnp.asarray(video))  # converted where it lies, before the copy to the host
    assert isinstance(on_device, jax.Array) and on_device.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(on_device), frames)
    with pytest.raises(InputError, match="batch"):
        to_uint8_frames(np.zeros((2, 3, 1, 2, 2), np.float32))
    model = to_model_input(_gradient_frames(3, 8, 8))
    assert model.shape == (1, 3, 3, 8, 8) and model.dtype == np.float32
    np.testing.assert_allclose(to_model_input(np.array([[[[0, 255, 51]]]], np.uint8))[:, :, 0, 0, 0], [[-1, 1, -0.6]])


def test_resizing():
    frames = _gradient_frames(2, 40, 60)
    resized = resize_frames(frames, 16, 32)
    assert resized.shape == (2, 16, 32, 3)
    want = np.asarray(PIL.Image.fromarray(frames[1]).resize((32, 16), resample=PIL.Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(resized[1], want)
    assert resize_frames(frames, 40, 60) is frames
    with pytest.raises(InputError, match="resize method"):
        resize_frames(frames, 16, 32, method="nearest-ish")
    assert frames_at_fps(np.arange(10), 30, 15).tolist() == [0, 2, 4, 6, 8]
    assert frames_at_fps(np.arange(4), 15, 15).tolist() == [0, 1, 2, 3]
    assert frames_at_fps(np.arange(4), 25, 30).tolist() == [0, 1, 2, 3]  # near the rate: as it is, as the demo
    # a 15 fps video (LongCat's own output) as the 30 fps refinement's condition: each frame twice, so it keeps time
    assert frames_at_fps(np.arange(3), 15, 30).tolist() == [0, 0, 1, 1, 2, 2]
    assert frames_at_fps(np.arange(3), 0.0, 15).tolist() == [0, 1, 2]  # no rate in the container: as they are


def test_align_corners_resize_and_refine_upsampling():
    line = np.array([0.0, 10.0, 40.0], np.float32)
    np.testing.assert_allclose(resize_align_corners(line, 0, 5), [0, 5, 10, 25, 40], atol=1e-5)
    np.testing.assert_allclose(resize_align_corners(line, 0, 1), [0.0])
    frames = _gradient_frames(3, 8, 12)
    up = upsample_for_refine(frames, num_frames=6, height=16, width=24)
    assert up.shape == (1, 3, 6, 16, 24)
    first = np.asarray(frames[0], np.float32).transpose(2, 0, 1) / 255 * 2 - 1
    np.testing.assert_allclose(up[0, :, 0, ::15, ::23], first[:, ::7, ::11], atol=1e-5)  # corners map to corners
    flat = np.full((2, 8, 8, 3), 51, np.uint8)
    np.testing.assert_allclose(upsample_for_refine(flat, 4, 16, 16), -0.6, atol=1e-6)


def test_written_file_has_the_usual_permissions(tmp_path):
    path = write_npz(tmp_path / "clip.npz", np.zeros((1, 8, 8, 3), np.uint8), fps=15)
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_truncated_video_is_read_with_a_warning(tmp_path, caplog):
    """A video cut short (an interrupted download) decodes to fewer frames than its container says: warned, never
    continued silently. The mp4 is written with its index first, so that the cut file still opens."""
    import imageio_ffmpeg

    frames = np.random.default_rng(0).integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    writer = imageio_ffmpeg.write_frames(str(tmp_path / "full.mp4"), (32, 32), fps=15, codec="libx264", quality=None,
                                         macro_block_size=1, output_params=["-crf", "18", "-movflags", "+faststart"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")  # ffmpeg runs no JAX
        writer.send(None)
    for frame in frames:
        writer.send(frame.tobytes())
    writer.close()
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        full, _ = read_video(tmp_path / "full.mp4")
    assert len(full) == 60 and "truncated" not in caplog.text
    with caplog.at_level(logging.WARNING):
        cut, fps = read_video(tmp_path / "cut.mp4")
    assert 0 < len(cut) < 50 and fps == 15.0
    assert f"cut.mp4 decodes to {len(cut)} frames, but its container says 4 s at 15 fps (60 frames)" in caplog.text
    assert "may be truncated" in caplog.text
