"""The worker's one injected clock: how it measures, waits and sets timers (tests drive it by hand)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class Timer(Protocol):
    """A started one-shot timer: ``cancel`` stops it if it has not fired; ``join`` waits for a firing one."""

    def cancel(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


StartTimer = Callable[[float, Callable[[], None]], Timer]


def start_thread_timer(delay: float, fire: Callable[[], None]) -> Timer:
    """Call ``fire`` on a daemon thread after ``delay`` seconds."""
    timer = threading.Timer(delay, fire)
    timer.daemon = True
    timer.start()
    return timer


@dataclass(frozen=True)
class WorkerClock:
    """Monotonic time, one-shot timers and pauses: the watchdog, the heartbeat, the cancel check, retries.

    Records and leases are stamped with the wall clock (``Deps.clock``); this one
    only measures and waits, so a test passes ``ManualTimers`` and moves it by hand.
    """

    monotonic: Callable[[], float] = time.monotonic
    start_timer: StartTimer = start_thread_timer
    sleep: Callable[[float], None] = time.sleep
