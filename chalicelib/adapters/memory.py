"""In-memory fakes of every port, for unit tests. The contract suite keeps them honest."""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from chalicelib import policy
from chalicelib.domain import (
    CANCELLED,
    FAILURE,
    FINISHED,
    PENDING,
    STARTED,
    Handoff,
    IdempotencyMismatchError,
    QueueDepth,
    QueuedMessage,
    Task,
    TaskSummary,
    UserUsage,
)
from chalicelib.policy import Backlog, Slot
from chalicelib.ports import ALREADY_FINISHED, MISSING, RUNNING_ELSEWHERE, STARTED_NOW, QueuedLimitError


class MemoryUsageStore:
    def __init__(self) -> None:
        self._buckets: dict[tuple[str, int], tuple[int, int]] = {}  # (user, start) -> (count, expires_at)
        self._weights: dict[str, int] = {}
        self._queued: dict[str, int] = {}
        self._lock = threading.Lock()

    def record_submission(
        self, user_id: str, now: float, bucket_seconds: int, window_seconds: int, max_queued: int | None = None
    ) -> tuple[int, int]:
        start = policy.bucket_start(now, bucket_seconds)
        with self._lock:
            queued = self._queued.get(user_id, 0)
            if max_queued is not None and queued >= max_queued:
                raise QueuedLimitError(queued)
            self._queued[user_id] = queued + 1
            count, _ = self._buckets.get((user_id, start), (0, 0))
            self._buckets[(user_id, start)] = (count + 1, policy.bucket_expiry(start, bucket_seconds, window_seconds))
            total = self._count(user_id, now)
            return total - 1, self._weights.get(user_id, 1)

    def set_queued(self, user_id: str, seen: int, value: int) -> bool:
        with self._lock:
            if self._queued.get(user_id, 0) != seen:
                return False
            self._queued[user_id] = value
            return True

    def usage(self, user_id: str, now: float, bucket_seconds: int, window_seconds: int) -> tuple[int, int]:
        with self._lock:
            return self._count(user_id, now), self._weights.get(user_id, 1)

    def _count(self, user_id: str, now: float) -> int:
        return policy.live_count(((exp, n) for (u, _), (n, exp) in self._buckets.items() if u == user_id), now)

    def set_weight(self, user_id: str, weight: int, now: float, bucket_seconds: int, window_seconds: int) -> None:
        with self._lock:
            self._weights[user_id] = weight

    def refund(self, user_id: str, submitted_at: float, now: float, bucket_seconds: int, window_seconds: int) -> bool:
        start = policy.bucket_start(submitted_at, bucket_seconds)
        key = (user_id, start)
        with self._lock:
            count, expires = self._buckets.get(key, (0, 0))
            # As DynamoDB's adapter: the window given decides whether the bucket is still in it.
            if count <= 0 or not policy.is_live(policy.bucket_expiry(start, bucket_seconds, window_seconds), now):
                return False
            self._buckets[key] = (count - 1, expires)
            return True

    def top_users(
        self, now: float, bucket_seconds: int, window_seconds: int, limit: int, max_items: int
    ) -> tuple[list[UserUsage], bool]:
        current = policy.bucket_start(now, bucket_seconds)
        with self._lock:
            counts: dict[str, int] = {}
            for (user, start), (n, expires) in self._buckets.items():
                if start <= current and policy.is_live(expires, now):
                    counts[user] = counts.get(user, 0) + n
            ranked = sorted((-n, user) for user, n in counts.items() if n > 0)[:limit]
            return [UserUsage(user, -n, self._weights.get(user, 1)) for n, user in ranked], False


class MemoryTaskStore:
    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._since: dict[str, float] = {}  # queued since (submit, or the last requeue)
        self._lock = threading.Lock()

    def create(self, task: Task) -> None:
        with self._lock:
            if task.task_id in self._tasks:
                raise ValueError(f"task {task.task_id} exists")
            self._tasks[task.task_id] = copy.deepcopy(task)

    def get(self, task_id: str) -> Task | None:
        with self._lock:
            task = self._tasks.get(task_id)
            return copy.deepcopy(task) if task else None

    def delete(self, task_id: str) -> None:
        with self._lock:
            self._tasks.pop(task_id, None)

    def cancel_pending(self, task_id: str, now: float, expires_at: float) -> bool:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.task_status != PENDING:
                return False
            self._tasks[task_id] = replace(task, task_status=CANCELLED, finished_at=now, expires_at=int(expires_at))
            return True

    def request_cancel(self, task_id: str) -> bool:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.task_status != STARTED:
                return False
            self._tasks[task_id] = replace(task, cancel_requested=True)
            return True

    def start(
        self, task_id: str, run_id: str, now: float, lease_until: float, slot_holder: str = ""
    ) -> tuple[str, Task | None]:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return MISSING, None
            if task.task_status in FINISHED:
                return ALREADY_FINISHED, copy.deepcopy(task)
            if task.task_status == STARTED and policy.is_live(task.run_lease_until or 0.0, now):
                return RUNNING_ELSEWHERE, copy.deepcopy(task)
            assert task.task_status in (PENDING, STARTED)
            task = replace(
                task,
                task_status=STARTED,
                started_at=now,
                run_id=run_id,
                run_lease_until=lease_until,
                run_holder=slot_holder or None,
                attempts=task.attempts + 1,
            )
            self._tasks[task_id] = task
            return STARTED_NOW, copy.deepcopy(task)

    def finish(
        self,
        task_id: str,
        run_id: str,
        status: str,
        now: float,
        expires_at: float,
        result: object = None,
        error: str | None = None,
        unless_cancel_requested: bool = False,
    ) -> bool:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.task_status != STARTED or task.run_id != run_id:
                return False
            if unless_cancel_requested and task.cancel_requested:
                return False
            self._tasks[task_id] = replace(
                task,
                task_status=status,
                finished_at=now,
                result=copy.deepcopy(result) if error is None else None,
                error=error,
                run_lease_until=None,
                run_holder=None,
                expires_at=int(expires_at),
            )
            return True

    def requeue(self, task_id: str, queue_seq: int, expires_at: float, now: float) -> Task | None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.task_status != FAILURE:
                return None
            task = replace(
                task,
                task_status=PENDING,
                queue_seq=queue_seq,
                expires_at=int(expires_at),
                attempts=0,
                started_at=None,
                finished_at=None,
                run_id=None,
                run_lease_until=None,
                run_holder=None,
                error=None,
                result=None,
                cancel_requested=False,
            )
            self._tasks[task_id] = task
            self._since[task_id] = now
            return copy.deepcopy(task)

    def running_holders(self, level: int, now: float) -> list[str]:
        with self._lock:
            return [
                t.run_holder or ""
                for t in self._tasks.values()
                if t.task_status == STARTED and t.priority_level == level and (t.run_lease_until or 0.0) > now
            ]

    def recent(self, now: float, limit: int) -> list[TaskSummary]:
        with self._lock:
            done = [t for t in self._tasks.values() if t.task_status in FINISHED and t.finished_at is not None]
        done.sort(key=lambda t: t.finished_at or 0.0, reverse=True)
        return [
            TaskSummary(
                t.task_id,
                t.user_id,
                t.task_status,
                t.priority_level,
                t.submitted_at,
                t.started_at,
                t.finished_at or 0.0,
                t.error,
            )
            for t in done
            # as the DynamoDB index: this hour's and the last hour's
            if int((t.finished_at or 0.0) // 3600) in (int(now // 3600), int((now - 3600) // 3600))
        ][:limit]

    def _queued(self, level: int) -> list[tuple[float, Task]]:
        return sorted(
            (
                (self._since.get(t.task_id, t.submitted_at), t)
                for t in self._tasks.values()
                if t.task_status == PENDING and t.priority_level == level
            ),
            key=lambda pair: pair[0],
        )

    def oldest_queued(self, level: int) -> float | None:
        with self._lock:
            queued = self._queued(level)
            return queued[0][0] if queued else None

    def queued_before(self, level: int, before: float, limit: int) -> list[Task]:
        with self._lock:
            return [copy.deepcopy(t) for since, t in self._queued(level) if since < before][:limit]

    def mark_requeued(self, task_id: str, now: float, expires_at: float) -> bool:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.task_status != PENDING:
                return False
            self._since[task_id] = now
            self._tasks[task_id] = replace(task, expires_at=int(expires_at))
            return True

    def queued_count(self, user_id: str) -> int:
        with self._lock:
            return sum(1 for t in self._tasks.values() if t.user_id == user_id and t.task_status == PENDING)

    def all(self) -> list[Task]:
        with self._lock:
            return [copy.deepcopy(t) for t in self._tasks.values()]


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

    def give_back(self, level: int, receipt_handles: list[str]) -> None:
        with self._lock:
            for message in self.queues[level]:
                if message.receipt in receipt_handles:
                    message.visible_at = 0.0

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


class MemoryControlStore:
    def __init__(self) -> None:
        self._slots: dict[int, Slot] = {}
        self._state = Backlog()
        self._mutex = threading.Lock()

    def slots(self, capacity: int) -> list[Slot]:
        with self._mutex:
            return [self._slots[i] for i in sorted(self._slots) if i < capacity]

    def slots_and_backlog(self, capacity: int) -> tuple[list[Slot], Backlog]:
        return self.slots(capacity), self.backlog()

    def claim_slot(self, slot_id: int, holder: str, now: float, lease_until: float) -> bool:
        with self._mutex:
            slot = self._slots.get(slot_id, Slot(slot_id))
            if not slot.is_free(now):
                return False
            self._slots[slot_id] = Slot(slot_id, holder, lease_until, slot.tallies)
            return True

    def take_over_slot(self, slot_id: int, holder: str, new_holder: str, now: float, lease_until: float) -> bool:
        with self._mutex:
            slot = self._slots.get(slot_id)
            if slot is None or slot.holder != holder or not policy.is_live(slot.lease_until, now):
                return False
            self._slots[slot_id] = Slot(slot_id, new_holder, lease_until, slot.tallies)
            return True

    def renew_slot(self, slot_id: int, holder: str, lease_until: float) -> bool:
        with self._mutex:
            slot = self._slots.get(slot_id)
            if slot is None or slot.holder != holder:
                return False
            self._slots[slot_id] = Slot(slot_id, holder, lease_until, slot.tallies)
            return True

    def release_slot(self, slot_id: int, holder: str, tallies: Sequence[int] = ()) -> bool:
        with self._mutex:
            slot = self._slots.get(slot_id)
            if slot is None or slot.holder != holder:
                return False
            self._slots[slot_id] = Slot(slot_id, tallies=policy.add_tallies(slot.tallies, tallies))
            return True

    def backlog(self) -> Backlog:
        with self._mutex:
            return self._clamped()

    def add_backlog(self, level: int, delta: int, tallies: Sequence[int] = ()) -> int:
        with self._mutex:
            counts = list(self._state.counts)
            counts[level] += delta
            self._state = replace(
                self._state, counts=tuple(counts), tallies=policy.add_tallies(self._state.tallies, tallies)
            )
            return counts[level]

    def enqueue(self, level: int) -> tuple[int, int]:
        with self._mutex:
            counts, enqueued = list(self._state.counts), list(self._state.enqueued)
            counts[level] += 1
            enqueued[level] += 1
            self._state = replace(self._state, counts=tuple(counts), enqueued=tuple(enqueued))
            return counts[level], enqueued[level]

    def withdraw(self, level: int) -> None:
        with self._mutex:
            counts, withdrawn = list(self._state.counts), list(self._state.withdrawn)
            counts[level] -= 1
            withdrawn[level] += 1
            self._state = replace(self._state, counts=tuple(counts), withdrawn=tuple(withdrawn))

    def commit_pick(
        self, seen: Backlog, after: Backlog, takes: Mapping[int, int], tallies: Sequence[int] = ()
    ) -> tuple[bool, Backlog]:
        wanted = policy.takes_of(takes)
        with self._mutex:
            current = self._clamped()
            same_shape = all((a > 0) == (b > 0) for a, b in zip(current.counts, seen.counts, strict=True))
            enough = all(current.counts[level] >= n for level, n in wanted.items())
            if current.version != seen.version or not enough or not same_shape:
                return False, current
            counts, dequeued = list(self._state.counts), list(self._state.dequeued)
            for level, n in wanted.items():
                counts[level] -= n
                dequeued[level] += n
            self._state = replace(
                self._state,
                counts=tuple(counts),
                dequeued=tuple(dequeued),
                passes=after.passes,
                vtime=after.vtime,
                stamps=after.stamps,
                arrival_rates=after.arrival_rates,
                rated_enqueued=after.rated_enqueued,
                rated_at=after.rated_at,
                version=self._state.version + 1,
                run_seconds=after.run_seconds if after.run_seconds > 0 else self._state.run_seconds,
                tallies=policy.add_tallies(self._state.tallies, tallies),
            )
            return True, self._clamped()

    def _clamped(self) -> Backlog:
        return replace(self._state, counts=tuple(max(0, n) for n in self._state.counts))


class MemoryKeyStore:
    def __init__(self) -> None:
        self._keys: dict[str, tuple[str, bool]] = {}
        self._lock = threading.Lock()

    def put_key(self, key_hash: str, user_id: str, admin: bool, now: float) -> None:
        with self._lock:
            if key_hash in self._keys:
                raise ValueError("key exists")
            self._keys[key_hash] = (user_id, admin)

    def get_key(self, key_hash: str) -> tuple[str, bool] | None:
        with self._lock:
            return self._keys.get(key_hash)

    def delete_key(self, key_hash: str) -> bool:
        with self._lock:
            return self._keys.pop(key_hash, None) is not None


class RecordingInvoker:
    """Records hand-offs and dispatch triggers; tests run them when they choose."""

    def __init__(self) -> None:
        self.handoffs: list[Handoff] = []
        self.dispatch_triggers = 0
        self.fail_next_start: Exception | None = None
        self._lock = threading.Lock()

    def start_worker(self, handoff: Handoff) -> None:
        with self._lock:
            if self.fail_next_start is not None:
                exc, self.fail_next_start = self.fail_next_start, None
                raise exc
            self.handoffs.append(handoff)

    def trigger_dispatch(self) -> None:
        with self._lock:
            self.dispatch_triggers += 1

    def take_handoffs(self) -> list[Handoff]:
        with self._lock:
            out: list[Handoff] = self.handoffs
            self.handoffs = []
            return out


class MemoryIdempotency:
    """The idempotency contract without DynamoDB: one answer per (user_id, key), x checked."""

    def __init__(self) -> None:
        self._answers: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def run(
        self, user_id: str, key: str, x: Any, action: Callable[[], dict[str, Any]], lambda_context: Any = None
    ) -> tuple[dict[str, Any], bool]:
        fingerprint = json.dumps(x, sort_keys=True)
        with self._lock:
            found = self._answers.get((user_id, key))
            if found is not None:
                if found[0] != fingerprint:
                    raise IdempotencyMismatchError("this Idempotency-Key was used with a different 'x'")
                return dict(found[1]), True
            answer = action()
            self._answers[(user_id, key)] = (fingerprint, dict(answer))
            return dict(answer), False
