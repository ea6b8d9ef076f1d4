"""Supervision of the local runner's child processes: when to start a dead one again.

On AWS a crashed Lambda invocation is followed by the next one, and the
emulators' state is AWS's own. Locally the runner restarts what died: at once,
then with a growing pause while it keeps dying, so a process that cannot start
does not spin.
"""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import dataclass


def log_readably() -> None:
    """How every process of the local runner logs: one readable line per event, on stdout."""
    from chalicelib import observability

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    for noisy in ("botocore", "werkzeug", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    observability.readable_logs()  # JSON on Lambda; here the runner's own lines


@dataclass
class Backoff:
    """The pause before the next start: none after a death, doubling while deaths come in a row.

    A process that stayed up ``stable_seconds`` starts the count again.
    """

    first_pause: float = 1.0  # after the second death in a row
    longest_pause: float = 30.0
    stable_seconds: float = 30.0
    deaths_in_a_row: int = 0

    def pause(self, uptime: float) -> float:
        """The process died after ``uptime`` seconds: how long to wait before starting it again."""
        if uptime >= self.stable_seconds:
            self.deaths_in_a_row = 0
        self.deaths_in_a_row += 1
        if self.deaths_in_a_row == 1:
            return 0.0
        return min(self.longest_pause, self.first_pause * 2.0 ** (self.deaths_in_a_row - 2))


def exit_reason(returncode: int) -> str:
    """A child's exit as a person reads it: 'killed by SIGKILL', 'exited with code 1'."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"
