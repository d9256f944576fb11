"""The small image and clip that the task tests hand to `--image` and `--video`."""

from pathlib import Path

import numpy as np
import PIL.Image

from longcat_jax.video_io import write_mp4


def write_task_inputs(folder: Path) -> dict[str, str]:
    """A 48x48 PNG and a 9-frame 64x64 mp4 at 15 fps of random pixels in `folder`: {"image": path, "video": path}."""
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / "frame.png")
    write_mp4(folder / "clip.mp4", rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8), fps=15)
    return {"image": str(folder / "frame.png"), "video": str(folder / "clip.mp4")}
