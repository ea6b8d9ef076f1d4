"""Supervision: a dead process starts again at once, and ever later while it keeps dying."""

from __future__ import annotations

from local.supervision import Backoff, exit_reason


def test_a_first_death_restarts_at_once_and_deaths_in_a_row_wait_longer_up_to_a_limit() -> None:
    backoff = Backoff(first_pause=1.0, longest_pause=8.0, stable_seconds=30.0)
    assert [backoff.pause(uptime=2.0) for _ in range(7)] == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_a_process_that_stayed_up_long_enough_restarts_at_once_again() -> None:
    backoff = Backoff(first_pause=1.0, longest_pause=8.0, stable_seconds=30.0)
    assert [backoff.pause(uptime=1.0) for _ in range(3)] == [0.0, 1.0, 2.0]
    assert backoff.pause(uptime=45.0) == 0.0
    assert backoff.pause(uptime=1.0) == 1.0


def test_an_exit_reads_as_a_signal_or_a_code() -> None:
    assert exit_reason(-9) == "killed by SIGKILL"
    assert exit_reason(1) == "exited with code 1"
