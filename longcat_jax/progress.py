"""Progress of the package's long calls: tqdm bars on stderr for the CLI, and step reports for a program that
shows its own (the web app).

    with stepping(len(timesteps), "t2v denoising") as steps:   # a loop of counted steps: a bar, and reports
        for ...:
            ...
            steps.done()                                       # the bar advances; subscribers hear (desc, i, n)

    with on_steps(lambda desc, step, total: ...):              # subscribe, for the calls made inside the block
        generate_t2v(pipe, "A cat walks")

    with ticking("VAE decode"):                                # one long call without steps: time elapsed
        ...

Subscriptions belong to the thread (a `contextvars` context) that makes them: the app's worker hears its own job's
steps and no other thread's. A subscriber may raise to stop the loop at that step (the app's cancel does); the bar
is closed on the way out.

`ticking` is for one compiled VAE pass over a whole video, which takes minutes on a CPU or a small GPU and has no
steps to count: it shows its name and the time elapsed, refreshed from a background thread until the call returns.

Like every bar of the package (tqdm, on stderr) the bars are silenced with `TQDM_DISABLE=1` (subscribers still hear
the steps); pytest captures them.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from collections.abc import Callable, Iterator

from tqdm.auto import tqdm

TTY_INTERVAL = 1.0  # seconds between refreshes on a terminal
LOG_INTERVAL = 30.0  # and into a file or pipe, where each refresh is another piece of the log

StepListener = Callable[[str, int, int], None]  # (desc, steps done, steps in all)
_listeners: contextvars.ContextVar[tuple[StepListener, ...]] = contextvars.ContextVar("longcat_step_listeners",
                                                                                      default=())


@contextlib.contextmanager
def on_steps(listener: StepListener) -> Iterator[None]:
    """Calls `listener(desc, step, total)` after each step of every `stepping` loop run inside the block on this
    thread: `desc` names the loop (a denoising loop is named after its stage, e.g. "t2v denoising"), `step` counts
    from 1 to `total`."""
    token = _listeners.set((*_listeners.get(), listener))
    try:
        yield
    finally:
        _listeners.reset(token)


class Steps:
    """The steps of one `stepping` loop: its bar and this thread's listeners."""

    def __init__(self, bar: tqdm, desc: str, total: int, listeners: tuple[StepListener, ...]):
        self.bar = bar
        self.desc = desc
        self.total = total
        self.count = 0
        self._listeners = listeners

    @property
    def watched(self) -> bool:
        """Whether a listener hears the steps (a loop whose steps run asynchronously then waits for each one, so
        that a report means the step is done)."""
        return bool(self._listeners)

    def done(self) -> None:
        """One more step done: the bar advances, then each listener hears it (and may raise to stop the loop)."""
        self.count += 1
        self.bar.update(1)
        for listener in self._listeners:
            listener(self.desc, self.count, self.total)


@contextlib.contextmanager
def stepping(total: int, desc: str, unit: str = "step") -> Iterator[Steps]:
    """A loop of `total` steps named `desc`: a tqdm bar, and the reports of `on_steps` (see the module docstring)."""
    with tqdm(total=total, desc=desc, unit=unit) as bar:
        yield Steps(bar, desc, total, _listeners.get())


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
