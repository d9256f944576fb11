"""Periodic progress for a long call that has no steps to count: one compiled VAE pass over a whole video takes
minutes on a CPU or a small GPU, and a bar cannot advance inside it. `ticking` shows its name and the time elapsed,
refreshed from a background thread until the call returns.

Like every bar of the package (tqdm, on stderr) it is silenced with `TQDM_DISABLE=1`; pytest captures it.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

from tqdm.auto import tqdm

TTY_INTERVAL = 1.0  # seconds between refreshes on a terminal
LOG_INTERVAL = 30.0  # and into a file or pipe, where each refresh is another piece of the log


@contextlib.contextmanager
def ticking(desc: str, interval: float | None = None) -> Iterator[None]:
    """Shows `desc: MM:SS elapsed` while the block runs (the block must wait for its result, e.g. with
    `block_until_ready`, or it ends before the work does)."""
    bar = tqdm(desc=desc, bar_format="{desc}: {elapsed} elapsed")
    if bar.disable:
        yield
        return
    if interval is None:
        interval = TTY_INTERVAL if sys.stderr.isatty() else LOG_INTERVAL
    done = threading.Event()

    def refresh() -> None:
        while not done.wait(interval):
            bar.refresh()

    thread = threading.Thread(target=refresh, name=f"ticking: {desc}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        bar.close()
