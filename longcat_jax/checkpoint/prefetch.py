"""Reading a checkpoint's tensor stream ahead of its consumer, in one background thread, order kept.

Loading is a pipeline of host work (read a tensor from its file, lay it out, quantize it) and placement (copy it to
the device or into pinned host memory). `prefetched(stream)` runs the stream's producer in a thread and hands its
items over through a queue of `depth` items, so the next tensors are read while the current one is placed, and
host memory holds at most `depth` tensors beyond the one being placed. numpy and file reads release the GIL, so the
two overlap for real.

The consumer sees the producer's exception (a CheckpointError naming the file and tensor, an OSError naming the
file) as it was raised, at the item where it happened; items before it arrive first. Closing the consumer early
(an error while placing, a break) stops the producer after the item it is on and closes the stream.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

PREFETCH_DEPTH = 4  # tensors read ahead: at most 4 x 128 MiB (the DiT's largest bf16 kernel) beyond the one placed
_POLL_S = 0.1  # how often a blocked producer checks whether the consumer has gone


class _End:
    """The producer's last item: the stream ended, or failed with `error`."""

    def __init__(self, error: BaseException | None = None):
        self.error = error


def prefetched(items: Iterable[T], depth: int = PREFETCH_DEPTH, *, name: str = "checkpoint-prefetch") -> Iterator[T]:
    """`items`, in order, produced up to `depth` ahead in a background thread (started at the first `next`)."""
    if depth < 1:
        raise ValueError(f"prefetch depth must be at least 1, got {depth}")
    iterator = iter(items)
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterator:
                if not hand_over(item):
                    return
        except BaseException as error:  # handed to the consumer, which raises it
            hand_over(_End(error))
            return
        hand_over(_End())

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()
        thread.join()
        close = getattr(iterator, "close", None)
        if close is not None:
            close()  # a generator's own cleanup (its files, its `finally`) runs now, not when it is collected
