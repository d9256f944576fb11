"""Hub ids for `--model-path` and `LongCatPipeline.from_pretrained`, tested offline against a hub cache laid out as
`huggingface_hub` lays it out (blobs, a snapshot of links, refs/main) and holding the fixture checkpoint; and the
README's Python snippet, run as written on the built-in model (and, on a GPU, on a checkpoint folder)."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from longcat_jax import generate
from longcat_jax.checkpoint import hub
from longcat_jax.checkpoint.hub import hub_id, resolve_model_path
from longcat_jax.errors import CheckpointError, ConfigError, InputError
from longcat_jax.models.text_encoder.tiny_tokenizer import build_tiny_tokenizer
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.tasks import plan_run
from longcat_jax.video_io import read_video
from tests.helpers.xla_flags import subprocess_xla_flags

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
REPO = "tiny-owner/tiny-longcat"
REVISION = "3f1c0ffee3f1c0ffee3f1c0ffee3f1c0ffee3f1c"


def _write_hub_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """`files` (path in the repository -> source file) as huggingface_hub caches a download under `cache`
    (HF_HOME/hub): content-named blobs, `snapshots/<revision>/` of relative links to them, `refs/main`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True)
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory, fixtures_dir) -> Path:
    """HF_HOME holding REPO: the fixture DiT, VAE and text encoder, a tokenizer, and the fixture LoRA standing in
    for both of the checkpoint's LoRAs."""
    home = tmp_path_factory.mktemp("hf_home")
    tokenizer = tmp_path_factory.mktemp("tokenizer")
    build_tiny_tokenizer(tokenizer)
    files = {f"{part}/{file.name}": file for part in ("dit", "vae", "text_encoder")
             for file in sorted((fixtures_dir / part).iterdir()) if file.is_file()}
    files.update({f"tokenizer/{file.name}": file for file in tokenizer.iterdir()})
    for lora in ("cfg_step_lora", "refinement_lora"):
        files[f"lora/{lora}.safetensors"] = fixtures_dir / "lora_rank8.safetensors"
    _write_hub_cache(home / "hub", REPO, files)
    return home


@pytest.fixture()
def no_download(monkeypatch):
    """Fails the test if anything tries the hub."""
    def refuse(repo_id):
        raise AssertionError(f"tried to download {repo_id}")
    monkeypatch.setattr(hub, "download_checkpoint", refuse)


@pytest.mark.parametrize(("text", "is_id"), [
    ("meituan-longcat/LongCat-Video", True), ("owner/name.v2_1", True), ("LongCat-Video", False),
    ("./owner/name", False), ("/abs/owner/name", False), ("owner/name/dit", False), ("~/name", False),
    ("owner--x/name", False), ("-owner/name", False), ("owner/..", False), ("", False),
])
def test_which_text_is_a_hub_id(text, is_id):
    assert (hub_id(text) == text) is is_id


def test_an_existing_folder_wins_over_the_hub_id_of_the_same_text(tmp_path, monkeypatch, no_download):
    monkeypatch.chdir(tmp_path)
    Path(REPO).mkdir(parents=True)
    assert resolve_model_path(REPO) == Path(REPO)


def test_neither_folder_nor_hub_id_is_refused_by_name(tmp_path, monkeypatch, no_download):
    monkeypatch.chdir(tmp_path)
    for text in ("LongCat-Video", "weights/LongCat-Video/dit"):
        with pytest.raises(CheckpointError, match="not found, and it is not a Hugging Face hub id") as err:
            resolve_model_path(text)
        assert "meituan-longcat/LongCat-Video" in str(err.value)  # the fix names the released id


def test_cheap_checks_come_before_any_download(tmp_path, monkeypatch, no_download):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="missing.png"):
        plan_run(generate.parse_request(["--model-path", REPO, "--task", "i2v", "--image", "missing.png"]))
    with pytest.raises(ConfigError, match="no_such_preset"):
        plan_run(generate.parse_request(["--model-path", REPO, "--bsa-config", "no_such_preset"]))
    with pytest.raises(ConfigError, match="no_such_preset"):
        LongCatPipeline.from_pretrained(REPO, bsa_config="no_such_preset")


_OFFLINE_RUN = """
import sys
import jax.numpy as jnp
from longcat_jax import generate
from longcat_jax.pipelines.pipeline import LongCatPipeline
repo, output = sys.argv[1:]
print("cli", generate.main(["--model-path", repo, "--height", "64", "--width", "64", "--num-frames", "5",
                            "--num-inference-steps", "2", "--dtype", "float32", "--output-path", output]))
print("uncached", generate.main(["--model-path", repo + "-uncached"]))
print("depth", LongCatPipeline.from_pretrained(repo, dtype=jnp.float32).dit.config.depth)
"""


@pytest.mark.slow
def test_a_hub_id_resolves_offline_from_the_hub_cache(hub_home, fixtures_dir, tmp_path):
    """HF_HUB_OFFLINE=1 (huggingface_hub reads it at import, hence a fresh process): the CLI and from_pretrained
    find the snapshot in the cache; an id the cache lacks is refused with the download command."""
    env = {**os.environ, "HF_HOME": str(hub_home), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": subprocess_xla_flags()}
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(name, None)
    output = tmp_path / "hub.mp4"
    run = subprocess.run([sys.executable, "-c", _OFFLINE_RUN, REPO, str(output)], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    results = dict(line.split() for line in run.stdout.splitlines() if re.match(r"(cli|uncached|depth) ", line))
    depth = json.loads((fixtures_dir / "dit" / "config.json").read_text())["depth"]
    assert results == {"cli": "0", "uncached": "2", "depth": str(depth)}
    assert f"snapshots/{REVISION}" in run.stderr  # the resolved folder is logged
    assert f"hf download {REPO}-uncached" in run.stderr
    frames, _ = read_video(output)
    assert frames.shape == (5, 64, 64, 3)


def readme_python_snippet() -> str:
    """The first ```python block under the README's "From Python" heading."""
    text = README.read_text()
    section = text[text.index("### From Python"):]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python block under 'From Python' in {README}"
    return match.group(1)


@pytest.mark.slow
def test_readme_python_snippet_runs_as_written_on_the_builtin_model(tmp_path, monkeypatch, capsys):
    snippet = readme_python_snippet()
    assert "LongCatPipeline.builtin()" in snippet
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, str(README), "exec"), {"__name__": "readme"})
    assert "Summary:" in capsys.readouterr().out
    (written,) = (tmp_path / "outputs").glob("*.mp4")
    frames, fps = read_video(written)
    assert fps == 30.0 and len(frames) > 0


@pytest.mark.gpu
def test_readme_python_snippet_runs_on_a_checkpoint_folder(hub_home, tmp_path, monkeypatch, capsys):
    """The same snippet with the built-in model swapped for a checkpoint folder (the fixture checkpoint), at the
    released defaults: 480p distilled, then 720p refinement."""
    folder = next((hub_home / "hub").glob("models--*/snapshots/*"))
    snippet = readme_python_snippet().replace("LongCatPipeline.builtin()", f"LongCatPipeline.from_pretrained({str(folder)!r})")
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, str(README), "exec"), {"__name__": "readme"})
    assert "Summary:" in capsys.readouterr().out
    (written,) = (tmp_path / "outputs").glob("*.mp4")
    frames, fps = read_video(written)
    assert frames.shape[1:] == (704, 1280, 3) and fps == 30.0
