"""Held tasks: picked and not yet run, with a watchdog so a slow task strands none of them."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from chalicelib.clock import Timer, WorkerClock
from chalicelib.worker.picking import Picked


class Held:
    """A worker's held tasks (picked and not yet run), in the order to run them.

    While a task runs, a watchdog gives them all back (visible and counted, for
    any slot to take) once they have been held ``limit`` seconds; a batch that
    the pick-ahead thread picks while that task still runs goes straight back too.
    So no held task waits much longer than ``limit`` behind slow ones.
    """

    def __init__(self, put_back: Callable[[list[Picked]], None], limit: float, clock: WorkerClock) -> None:
        self._put_back = put_back
        self._limit = limit
        self._monotonic = clock.monotonic
        self._start_timer = clock.start_timer
        self._lock = threading.Lock()
        self._held: collections.deque[Picked] = collections.deque()
        self._since = 0.0  # when the oldest task held was picked (monotonic)
        self._overdue = False  # the running task outlived the limit: nothing more is held
        self._gave_back = False
        self._run = 0  # which run the watchdog watches; a late timer of an earlier one does nothing
        self._timer: Timer | None = None

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._held)

    def add(self, batch: list[Picked]) -> None:
        with self._lock:
            if not self._overdue:
                if batch and not self._held:
                    self._since = self._monotonic()
                self._held.extend(batch)
                return
            self._gave_back = self._gave_back or bool(batch)
        if batch:
            self._put_back(batch)

    def next(self) -> Picked | None:
        with self._lock:
            return self._held.popleft() if self._held else None

    def gave_back(self) -> bool:
        """Whether tasks went back during the last run (too long held); resets."""
        with self._lock:
            gave_back, self._gave_back = self._gave_back, False
            return gave_back

    def running(self, pending: bool) -> None:
        """A task starts: watch it if tasks are held, or a batch is being picked (``pending``)."""
        if self._limit <= 0:
            return
        with self._lock:
            if not (self._held or pending):
                return
            waited = self._monotonic() - self._since if self._held else 0.0
            run = self._run
        self._timer = self._start_timer(max(0.0, self._limit - waited), lambda: self._overstayed(run))

    def ran(self) -> None:
        """The task is done (or failed): stop watching, and wait for a watchdog already at work."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            timer.join()
        with self._lock:
            self._run += 1
            self._overdue = False

    def take_all(self) -> list[Picked]:
        with self._lock:
            left = list(self._held)
            self._held.clear()
            return left

    def _overstayed(self, run: int) -> None:
        with self._lock:
            if run != self._run:
                return  # that task is over
            self._overdue = True
            left = list(self._held)
            self._held.clear()
            self._gave_back = self._gave_back or bool(left)
        if left:
            self._put_back(left)
