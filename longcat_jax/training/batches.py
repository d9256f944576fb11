"""Which cached clips each optimiser step trains on, and reading them into arrays.

The order is a pure function of (seed, step): every epoch shuffles each bucket's clips with a generator seeded
by (seed, epoch), cuts them into groups of batch_size x grad_accumulation (a bucket's last group is filled up
with clips from its start, so no clip is left out and tiny datasets still fill a batch), and shuffles the order
of the groups. A resumed run therefore sees exactly the clips the uninterrupted run would have, with no iterator
state to save beyond the step. All clips of a group share one bucket, so a step has one shape.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from longcat_jax.training.cache import CachedClip, read_clip


class BatchPlan:
    """The clips of every step (see the module docstring)."""

    def __init__(self, clips: Sequence[CachedClip], group_size: int, seed: int):
        self.group_size = group_size
        self.seed = seed
        buckets: dict[tuple[int, int, int], list[int]] = {}
        for index, clip in enumerate(clips):
            buckets.setdefault(clip.bucket, []).append(index)
        self.buckets = {bucket: buckets[bucket] for bucket in sorted(buckets)}
        self.groups_per_epoch = sum(math.ceil(len(ids) / group_size) for ids in self.buckets.values())
        self._epoch_cache: tuple[int, list[np.ndarray]] | None = None

    def _groups(self, epoch: int) -> list[np.ndarray]:
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        groups = []
        for ids in self.buckets.values():
            order = rng.permutation(np.asarray(ids))
            filled = np.resize(order, math.ceil(len(order) / self.group_size) * self.group_size)
            groups += list(filled.reshape(-1, self.group_size))
        groups = [groups[i] for i in rng.permutation(len(groups))]
        self._epoch_cache = (epoch, groups)
        return groups

    def clip_indices(self, step: int) -> list[int]:
        """Indices (into the clip list) of the `group_size` clips of optimiser step `step` (0-based)."""
        epoch, index = divmod(step, self.groups_per_epoch)
        return [int(i) for i in self._groups(epoch)[index]]


@dataclasses.dataclass(frozen=True)
class Batch:
    """One optimiser step's data, micro-batches first: latents [A, B, C, T, h, w] float32 (posterior mean and std),
    text [A, B, 1, L, C_text] float32 zero-padded to L tokens, mask [A, B, L] int32."""

    latent_mean: np.ndarray
    latent_std: np.ndarray
    text: np.ndarray
    mask: np.ndarray


def load_batch(cache_dir: Path, clips: Sequence[CachedClip], indices: Sequence[int], accumulation: int,
               text_length: int) -> Batch:
    """Reads the clips `indices` from the cache as a `Batch` of `accumulation` micro-batches."""
    means, stds, texts, masks = [], [], [], []
    for index in indices:
        mean, std, text = read_clip(cache_dir, clips[index])
        tokens = min(text.shape[0], text_length)
        padded = np.zeros((text_length, text.shape[1]), np.float32)
        padded[:tokens] = text[:tokens]
        means.append(mean)
        stds.append(std)
        texts.append(padded[None])
        masks.append((np.arange(text_length) < tokens).astype(np.int32))

    def stack(arrays: list[np.ndarray]) -> np.ndarray:
        out = np.stack(arrays)
        return out.reshape(accumulation, out.shape[0] // accumulation, *out.shape[1:])

    return Batch(stack(means), stack(stds), stack(texts), stack(masks))


class BatchLoader:
    """`load_batch` for step n+1 in a background thread while step n trains."""

    def __init__(self, plan: BatchPlan, cache_dir: Path, clips: Sequence[CachedClip], accumulation: int,
                 text_length: int):
        self.plan = plan
        self._load = lambda step: load_batch(cache_dir, clips, plan.clip_indices(step), accumulation, text_length)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="longcat-batches")
        self._pending: dict[int, concurrent.futures.Future] = {}

    def get(self, step: int, *, prefetch_next: bool = True) -> Batch:
        """The batch of `step`; starts reading the next one."""
        future = self._pending.pop(step, None) or self._pool.submit(self._load, step)
        if prefetch_next:
            self._pending[step + 1] = self._pool.submit(self._load, step + 1)
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
