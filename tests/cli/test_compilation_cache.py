"""The persistent compilation cache: on by default in a user cache folder, `--compilation-cache DIR` / `none`, the
`LONGCAT_COMPILATION_CACHE` variable, and a folder that cannot be made. Entries are counted after compiling a tiny
function (with the one-second threshold lowered, so that it is kept) and after a CLI run of the built-in model."""

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.compilation_cache.compilation_cache import reset_cache

from longcat_jax import compilation_cache, generate
from longcat_jax.compilation_cache import ENV_VAR, default_cache_dir, disable_compilation_cache, enable_compilation_cache
from longcat_jax.errors import ConfigError

SMALL_RUN = ["--height", "64", "--width", "64", "--num-frames", "5", "--num-inference-steps", "1",
             "--context-parallel", "1", "--output-format", "npz"]


@pytest.fixture(autouse=True)
def _fresh_cache_settings(monkeypatch, tmp_path):
    """Each test starts with no cache folder and the user's cache home in tmp_path; JAX's settings and the logging
    that main() changes are put back afterwards."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = jax.config.jax_compilation_cache_dir
    seconds = jax.config.jax_persistent_cache_min_compile_time_secs
    root = logging.getLogger()
    level, formatters = root.level, [(h, h.formatter) for h in root.handlers]
    jax.config.update("jax_compilation_cache_dir", None)
    reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", seconds)
    reset_cache()
    root.setLevel(level)
    for handler, formatter in formatters:
        handler.setFormatter(formatter)


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*-cache")) if folder.exists() else []


def _compile_something_new(tag: float) -> None:
    """Compiles a function no earlier test compiled (the constant is part of the program)."""
    jax.jit(lambda x: jnp.sin(x) * tag + tag)(jnp.ones((4,))).block_until_ready()


def test_entries_land_in_the_folder_and_none_stops_them(tmp_path):
    folder = tmp_path / "cache"
    assert enable_compilation_cache(folder, min_compile_seconds=0) == folder
    _compile_something_new(1.25)
    kept = _entries(folder)
    assert any(name.startswith("jit__lambda") for name in kept)
    disable_compilation_cache()
    _compile_something_new(2.5)
    assert _entries(folder) == kept


def test_default_folder_is_in_the_user_cache_home(tmp_path):
    assert default_cache_dir() == tmp_path / "xdg" / "longcat_jax" / "jax_cache"
    assert enable_compilation_cache(min_compile_seconds=0) == default_cache_dir()
    _compile_something_new(3.75)
    assert _entries(default_cache_dir())


def test_environment_variable_picks_the_folder_or_turns_it_off(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "from_env"))
    assert enable_compilation_cache() == tmp_path / "from_env"
    monkeypatch.setenv(ENV_VAR, "none")
    assert enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None


def test_a_folder_that_cannot_be_made(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="--compilation-cache none"):
        enable_compilation_cache(blocker / "cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the default folder: a warning, and the run goes on
    with caplog.at_level(logging.WARNING, logger="longcat_jax.compilation_cache"):
        assert enable_compilation_cache() is None
    assert "running without it" in caplog.text


def test_cli_default_folder_and_none(tmp_path, caplog):
    """The flag is read before anything else: a run refused at planning (a height that is no multiple of 16) has
    already set the cache up, in the default folder, or nowhere with `none`."""
    with caplog.at_level(logging.INFO):
        assert generate.main(["--height", "100", "--compilation-cache", "none"]) == 2
    assert "JAX compilation cache: off" in caplog.text
    assert not (tmp_path / "xdg").exists() and jax.config.jax_compilation_cache_dir is None
    assert generate.main(["--height", "100"]) == 2
    assert jax.config.jax_compilation_cache_dir == str(default_cache_dir()) and default_cache_dir().is_dir()


@pytest.mark.slow
def test_cli_run_fills_the_named_folder(tmp_path, monkeypatch):
    """A run of the built-in model compiled afresh keeps its programs in --compilation-cache DIR, nothing elsewhere."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(compilation_cache, "MIN_COMPILE_SECONDS", 0.0)
    jax.clear_caches()
    folder = tmp_path / "cli_cache"
    assert generate.main([*SMALL_RUN, "--compilation-cache", str(folder)]) == 0
    assert len(_entries(folder)) >= 3  # at least the text encoder, the denoising step and the VAE decode
    assert not (tmp_path / "xdg").exists()
