"""The lease heartbeat: a worker renews its slot's lease while it holds the slot."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from chalicelib.clock import StartTimer, Timer

log = logging.getLogger("pqh")


class Heartbeat:
    """Renews a slot's lease every third of the lease while a worker holds it.

    The slot counts as lost when a renewal is refused (someone else holds it) or
    when the last lease that was granted is about to run out (renewals failing).
    Each renewal is a one-shot timer that sets the next, so a test fires them by
    moving its clock.
    """

    def __init__(
        self,
        renew: Callable[[], float | None],
        interval: float,
        clock: Callable[[], float],
        valid_until: float,
        start_timer: StartTimer,
    ) -> None:
        self._renew = renew
        self._interval = interval
        self._clock = clock
        self._valid_until = valid_until
        self._margin = min(5.0, interval / 2)
        self._start_timer = start_timer
        self._refused = False
        self._lock = threading.Lock()
        self._stopped = False
        self._timer: Timer | None = None

    @property
    def lost(self) -> bool:
        return self._refused or self._clock() >= self._valid_until - self._margin

    def __enter__(self) -> Heartbeat:
        self._next_beat()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._stopped = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            timer.join(timeout=5)  # a renewal under way ends before the slot is released

    def _next_beat(self) -> None:
        with self._lock:
            if not self._stopped:
                self._timer = self._start_timer(self._interval, self._beat)

    def _beat(self) -> None:
        try:
            granted = self._renew()
        except Exception:
            log.exception("could not renew the slot lease; will retry")
            self._next_beat()
            return
        if granted is None:
            self._refused = True  # someone else holds the slot now: stop taking tasks
            log.warning("lost the slot lease; finishing the current task only")
            return
        self._valid_until = granted
        self._next_beat()
