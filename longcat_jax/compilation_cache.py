"""JAX's persistent compilation cache, on by default: a program compiled once on this machine is read back from disk
by later runs instead of being compiled again (the real model's denoising step and VAE take tens of seconds to
compile), and on a GPU XLA's autotuning results are kept beside it.

`python -m longcat_jax.generate` calls `enable_compilation_cache` before anything compiles: `--compilation-cache DIR`
picks the folder, `--compilation-cache none` turns the cache off. Without the flag the folder is
`LONGCAT_COMPILATION_CACHE` (a folder or `none`), else JAX's own `JAX_COMPILATION_CACHE_DIR`, else
`$XDG_CACHE_HOME/longcat_jax/jax_cache` (`~/.cache/longcat_jax/jax_cache`). From Python, call
`enable_compilation_cache()` (same rules) before the first generation.

Only programs that took at least `min_compile_seconds` to compile are kept (JAX's default, 1 s), so the folder holds
the expensive ones. The cache is trusted code: point it only at a folder nobody else can write to.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

from longcat_jax.errors import ConfigError

logger = logging.getLogger(__name__)

DISABLED = "none"
ENV_VAR = "LONGCAT_COMPILATION_CACHE"
MIN_COMPILE_SECONDS = 1.0  # JAX's default: faster compilations are not worth a disk entry


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/longcat_jax/jax_cache`, or `~/.cache/longcat_jax/jax_cache` without XDG_CACHE_HOME."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "longcat_jax" / "jax_cache"


def enable_compilation_cache(folder: str | os.PathLike | None = None, *,
                             min_compile_seconds: float | None = None) -> Path | None:
    """Points JAX's persistent compilation cache at `folder` (created if needed) and returns it; `"none"` turns the
    cache off and returns None. `folder` None: `LONGCAT_COMPILATION_CACHE`, else `JAX_COMPILATION_CACHE_DIR`, else
    `default_cache_dir()`.

    A folder given by name (argument or environment) that cannot be created is refused with a ConfigError; the
    default one only logs a warning and the run goes on uncached (a read-only home must not stop a run).
    """
    chosen = folder if folder is not None else os.environ.get(ENV_VAR) or jax.config.jax_compilation_cache_dir
    if chosen is not None and os.fspath(chosen).strip().lower() == DISABLED:
        _point_cache_at(None)
        logger.info("JAX compilation cache: off")
        return None
    path = Path(chosen).expanduser() if chosen else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if chosen:
            raise ConfigError(f"cannot create the compilation cache folder {path} ({err}); pass "
                              f"--compilation-cache with a writable folder, or --compilation-cache none") from err
        logger.warning("cannot create the compilation cache folder %s (%s); running without it (set "
                       "--compilation-cache DIR or %s to a writable folder)", path, err, ENV_VAR)
        _point_cache_at(None)
        return None
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      MIN_COMPILE_SECONDS if min_compile_seconds is None else min_compile_seconds)
    _point_cache_at(path)
    logger.info("JAX compilation cache: %s (`--compilation-cache none` turns it off)", path)
    return path


def disable_compilation_cache() -> None:
    """Turns the persistent compilation cache off for this process (`enable_compilation_cache("none")`)."""
    enable_compilation_cache(DISABLED)


def _point_cache_at(path: Path | None) -> None:
    """Sets JAX's cache folder. JAX opens its cache once, at the first compilation after a folder is set; a change
    after that needs a reset, or compilations would go on landing in the old folder."""
    new = None if path is None else str(path)
    if jax.config.jax_compilation_cache_dir != new:
        jax.config.update("jax_compilation_cache_dir", new)
        compilation_cache.reset_cache()
