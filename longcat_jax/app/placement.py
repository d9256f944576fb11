"""Which loaded placement serves which request: the app keeps one set of models placed by a memory plan, and each
request comes with a plan of its own.

A placement (`memory.plan.Placement`) is more frugal than another when it keeps less on the device in every part:
the text encoder on the CPU, the DiT streamed from host memory, smaller token chunks, smaller VAE tiles. Each
stage's estimate then needs no more device memory, so models loaded with a placement that `covers` a request's
serve it within its budget. Where they do not, the app loads them again with `most_frugal` of the two, which
serves both the earlier requests and this one: the placement only ever moves towards frugal, so requests of
alternating sizes do not reload the models each time (a restart returns to the fastest placement).
"""

from __future__ import annotations

import math

from longcat_jax.memory.plan import Placement


def covers(loaded: Placement, wanted: Placement) -> bool:
    """Whether models placed by `loaded` run a request planned with `wanted` within its budget."""
    return (loaded.text_on_cpu >= wanted.text_on_cpu
            and loaded.dit_streamed >= wanted.dit_streamed
            and _extent(loaded.chunk_tokens) <= _extent(wanted.chunk_tokens)
            and _extent(loaded.vae_tile) <= _extent(wanted.vae_tile))


def most_frugal(first: Placement, second: Placement) -> Placement:
    """The placement that covers both: each part the more frugal choice of the two."""
    return Placement(
        text_on_cpu=first.text_on_cpu or second.text_on_cpu,
        dit_streamed=first.dit_streamed or second.dit_streamed,
        chunk_tokens=min(first.chunk_tokens, second.chunk_tokens, key=_extent),
        vae_tile=min(first.vae_tile, second.vae_tile, key=_extent),
    )


def _extent(size: int | None) -> float:
    """Token chunks or tile sides; None (all tokens, whole frames) is the largest."""
    return math.inf if size is None else size
