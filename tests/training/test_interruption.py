"""Interrupt: the first signal asks for a clean stop; a second Ctrl-C stops at once."""

import signal

import pytest

from fissure.training.interruption import Interrupt


def test_the_first_signal_sets_the_flag_and_a_second_ctrl_c_raises():
    stop = Interrupt()
    stop(signal.SIGINT, None)
    assert stop.signum == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        stop(signal.SIGINT, None)


def test_sigterm_only_ever_asks_for_the_clean_stop():
    stop = Interrupt()
    stop(signal.SIGTERM, None)
    stop(signal.SIGTERM, None)  # a scheduler's repeat: the save still runs
    assert stop.signum == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):  # the user's Ctrl-C after it does not wait
        stop(signal.SIGINT, None)
