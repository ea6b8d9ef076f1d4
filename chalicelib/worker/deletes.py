"""Batched deletes: the messages of finished tasks, deleted ten per request."""

from __future__ import annotations

import logging
from collections.abc import Callable

from chalicelib.ports import TaskQueues

log = logging.getLogger("pqh")


class PendingDeletes:
    """Messages of finished tasks, deleted ten per request instead of one by one.

    A task's outcome is recorded before its message joins this list, so a worker
    that dies before the flush costs one wasted redelivery (found finished and
    dropped), never a second run. Flushed at ten per queue, when the oldest has
    waited ``max_age`` seconds (well inside the queues' visibility timeout), and
    when the worker stops.
    """

    def __init__(self, queues: TaskQueues, clock: Callable[[], float], max_age: float = 30.0) -> None:
        self._queues = queues
        self._clock = clock
        self._max_age = max_age
        self._pending: dict[int, list[str]] = {}
        self._since: float | None = None

    def add(self, level: int, receipt_handle: str) -> None:
        handles = self._pending.setdefault(level, [])
        handles.append(receipt_handle)
        if self._since is None:
            self._since = self._clock()
        if len(handles) >= 10:
            self._flush_level(level)

    def flush_if_due(self) -> None:
        if self._since is not None and self._clock() - self._since >= self._max_age:
            self.flush()

    def flush(self) -> None:
        for level in list(self._pending):
            self._flush_level(level)  # the last one empties the list, and so resets _since

    def _flush_level(self, level: int) -> None:
        handles = self._pending.pop(level)
        if not self._pending:
            self._since = None
        if handles:
            try:
                self._queues.delete_many(level, handles)
            except Exception:  # redelivered later, found finished, dropped
                log.exception("level %d: %d finished messages not deleted", level, len(handles))
