"""Holding Ctrl-C and SIGTERM back while Orbax writes or reads a chunk.

An interrupt that lands inside an Orbax call leaves its background threads running on: they go on writing,
then log tracebacks ("cannot schedule new futures after shutdown") while the interpreter exits. So inside
`deferred_interrupts()` the first SIGINT/SIGTERM is only noted, and delivered to the handler that was in place
as soon as the block ends (one chunk later); a second one is delivered at once, for a user who cannot wait.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _deliver(signum: int, handler, frame) -> None:
    """Does what `handler` (a previous handler) would have done with the signal."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Holds the first SIGINT/SIGTERM until the block ends (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}

    def hold(signum, frame):
        if pending:
            _deliver(signum, previous[signum], frame)
            return
        pending.append(signum)
        logger.info("stopping once the chunk in progress is written (interrupt again to stop at once)")

    for signum in _SIGNALS:
        signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if pending:
        _deliver(pending[0], previous[pending[0]], None)
