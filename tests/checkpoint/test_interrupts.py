"""`deferred_interrupts`: the first Ctrl-C waits for the block (an Orbax call) to end, a second one does not."""

import os
import signal

import pytest

from longcat_jax.checkpoint.interrupts import deferred_interrupts


def test_the_first_interrupt_waits_for_the_block_to_end():
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            finished.append(True)  # still running: the interrupt was held
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_interrupt_stops_at_once():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            reached.append(True)
    assert reached == []


def test_sigterm_goes_to_the_handler_that_was_in_place():
    class Terminated(Exception):
        pass

    def handler(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(Terminated):
            with deferred_interrupts():
                os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)
