"""In-memory fake of the task queues port, with SQS's visibility rules."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from chalicelib import policy
from chalicelib.domain import (
    QueueDepth,
    QueuedMessage,
    Task,
)


@dataclass
class _Message:
    task_id: str
    message_id: int
    user_id: str = ""
    submitted_at: float = 0.0
    tag: float = 0.0
    visible_at: float = 0.0
    receipt: str | None = None
    receives: int = 0
    reason: str = ""


@dataclass
class MemoryTaskQueues:
    """Six FIFO-ish queues with SQS's visibility rules.

    ``flaky_short_poll`` makes a short poll (wait 0) return nothing when the queue
    has messages, as SQS standard queues may; ``short_poll_most`` makes it return
    at most that many (SQS's short poll samples some of its servers, so a small
    queue often answers with fewer than asked for). Long polls always see them.
    """

    clock: Callable[[], float]
    visibility_timeout: float = 960.0  # as the queues in infra/resources.json
    flaky_short_poll: bool = False
    short_poll_most: int | None = None
    queues: dict[int, list[_Message]] = field(default_factory=lambda: {lvl: [] for lvl in range(policy.LEVELS)})
    dead: dict[int, list[_Message]] = field(default_factory=lambda: {lvl: [] for lvl in range(policy.LEVELS)})
    calls: list[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def send(self, level: int, task: Task) -> None:
        with self._lock:
            self.queues[level].append(
                _Message(
                    task.task_id, next(self._ids), user_id=task.user_id, submitted_at=task.submitted_at, tag=task.tag
                )
            )

    def receive(self, level: int, max_count: int, wait_seconds: int) -> list[QueuedMessage]:
        with self._lock:
            self.calls.append(("receive", level))
            if self.flaky_short_poll and wait_seconds == 0:
                return []
            if self.short_poll_most is not None and wait_seconds == 0:
                max_count = min(max_count, self.short_poll_most)
            return self._take(self.queues[level], max_count, self.visibility_timeout)

    def _take(self, queue: list[_Message], max_count: int, hide_seconds: float) -> list[QueuedMessage]:
        now = self.clock()
        out: list[QueuedMessage] = []
        for message in queue:
            if len(out) >= max(1, min(10, max_count)):
                break
            if message.visible_at <= now:
                message.receives += 1
                message.receipt = f"{message.message_id}:{message.receives}"
                message.visible_at = now + hide_seconds
                out.append(
                    QueuedMessage(
                        message.task_id,
                        message.receipt,
                        message.user_id,
                        message.submitted_at,
                        message.tag,
                        message.reason,
                    )
                )
        return out

    def delete(self, level: int, receipt_handle: str) -> None:
        with self._lock:
            self.queues[level] = [m for m in self.queues[level] if m.receipt != receipt_handle]

    def delete_many(self, level: int, receipt_handles: list[str]) -> None:
        with self._lock:
            self.calls.append(("delete_many", level))
            self.queues[level] = [m for m in self.queues[level] if m.receipt not in receipt_handles]

    def give_back(self, level: int, receipt_handles: list[str], after_seconds: int = 0) -> None:
        with self._lock:
            visible_at = self.clock() + after_seconds if after_seconds > 0 else 0.0
            for message in self.queues[level]:
                if message.receipt in receipt_handles:
                    message.visible_at = visible_at

    def depth(self, level: int) -> int:
        with self._lock:
            return len(self.queues[level])

    def depths(self) -> list[QueueDepth]:
        with self._lock:
            now = self.clock()
            return [
                QueueDepth(
                    level,
                    queued=sum(1 for m in self.queues[level] if m.visible_at <= now),
                    in_flight=sum(1 for m in self.queues[level] if m.visible_at > now),
                    dead=len(self.dead[level]),
                )
                for level in range(policy.LEVELS)
            ]

    def send_dead(self, level: int, message: QueuedMessage, reason: str) -> None:
        with self._lock:
            self.dead[level].append(
                _Message(
                    message.task_id,
                    next(self._ids),
                    user_id=message.user_id,
                    submitted_at=message.submitted_at,
                    tag=message.tag,
                    reason=reason,
                )
            )

    def receive_dead(self, level: int, max_count: int, hide_seconds: int) -> list[QueuedMessage]:
        with self._lock:
            return self._take(self.dead[level], max_count, hide_seconds)

    def delete_dead(self, level: int, receipt_handle: str) -> None:
        with self._lock:
            self.dead[level] = [m for m in self.dead[level] if m.receipt != receipt_handle]

    def purge_dead(self, level: int) -> int:
        with self._lock:
            count = len(self.dead[level])
            self.dead[level] = []
            return count
