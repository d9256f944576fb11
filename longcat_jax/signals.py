"""SIGTERM handled like Ctrl-C (SIGINT), for the CLI.

`timeout`, `docker stop`, Slurm and systemd stop a process with SIGTERM, whose default action kills Python at once:
no cleanup runs, so a temporary output file could stay behind and the log would end mid-line. Inside
`sigterm_as_interrupt()`, SIGTERM raises `Terminated`, a `KeyboardInterrupt`, so every cleanup that Ctrl-C runs
(temporary files removed, ffmpeg stopped) runs for it too; the CLI then exits with 143 (128 + SIGTERM) instead of
130. Only the first SIGTERM raises: later ones are ignored so that they cannot cut the cleanup short.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

INTERRUPT_EXIT_STATUS = 128 + signal.SIGINT  # 130, as a shell reports Ctrl-C
TERMINATED_EXIT_STATUS = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; raised as an interrupt so that the same cleanup runs."""


def exit_status(stop: KeyboardInterrupt) -> int:
    """143 for SIGTERM, 130 for Ctrl-C."""
    return TERMINATED_EXIT_STATUS if isinstance(stop, Terminated) else INTERRUPT_EXIT_STATUS


def describe(stop: KeyboardInterrupt) -> str:
    """'terminated (SIGTERM)' or 'interrupted', for the one line the CLI ends with."""
    return "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second SIGTERM must not interrupt the cleanup
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated`; the previous handler is restored afterwards. Outside the main
    thread (where Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
