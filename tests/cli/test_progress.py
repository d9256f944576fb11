"""Progress on the stages without denoising steps: a loading bar per model that runs to the number of tensors
read, and a ticking elapsed-time line around each VAE pass of the pipeline."""

import re
import time

import jax
import jax.numpy as jnp
import pytest

from longcat_jax.models.dit.loading import load_dit
from longcat_jax.models.text_encoder.loading import load_text_encoder
from longcat_jax.models.vae import load_vae, random_vae
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.presets import TINY_VAE_CONFIG
from longcat_jax.progress import ticking


def _last_counts(stderr: str, desc: str) -> tuple[int, int]:
    """(done, total) of the last refresh of the bar called `desc`."""
    counts = re.findall(rf"{re.escape(desc)}: .*?(\d+)/(\d+) \[", stderr)
    assert counts, f"no '{desc}' bar in {stderr!r}"
    return tuple(map(int, counts[-1]))


@pytest.mark.parametrize(("desc", "load", "part"), [
    ("Loading DiT", lambda path: load_dit(path, dtype=jnp.float32), "dit"),
    ("Loading VAE", load_vae, "vae"),
    ("Loading text encoder", lambda path: load_text_encoder(path, dtype=jnp.float32), "text_encoder"),
])
def test_each_loader_has_a_bar_that_runs_to_its_total(desc, load, part, fixtures_dir, capsys):
    load(fixtures_dir / part)
    done, total = _last_counts(capsys.readouterr().err, desc)
    assert done == total > 0


def test_ticking_refreshes_until_the_block_ends(capsys):
    with ticking("slow call", interval=0.05):
        time.sleep(0.4)
    lines = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if line.startswith("slow call: ")]
    assert len(lines) >= 3 and all(line.strip().endswith("elapsed") for line in lines)


def test_vae_passes_of_the_pipeline_tick(capsys):
    pipe = LongCatPipeline(None, random_vae(TINY_VAE_CONFIG), None, None)
    latents = pipe.encode_frames(jnp.zeros((1, 3, 1, 16, 16)), jax.random.key(0))  # one frame: the least to compile
    frames = pipe.decode_latents(latents)
    assert frames.shape == (1, 16, 16, 3)
    stderr = capsys.readouterr().err
    assert "VAE encode (1 frames): " in stderr and "VAE decode (1 latent frames): " in stderr
