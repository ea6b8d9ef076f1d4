"""In-memory fakes of every port, for unit tests. The contract suite keeps them honest."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from chalicelib import policy, top_users
from chalicelib.adapters.memory_control import MemoryControlStore
from chalicelib.adapters.memory_queues import MemoryTaskQueues
from chalicelib.domain import (
    CANCELLED,
    FAILURE,
    FINISHED,
    PENDING,
    STARTED,
    Handoff,
    IdempotencyMismatchError,
    Task,
    TaskSummary,
    UserUsage,
)
from chalicelib.ports import ALREADY_FINISHED, MISSING, RUNNING_ELSEWHERE, STARTED_NOW, QueuedLimitError

# The queues and the control store have modules of their own; importers find them here too.
__all__ = [
    "MemoryControlStore",
    "MemoryIdempotency",
    "MemoryKeyStore",
    "MemoryTaskQueues",
    "MemoryTaskStore",
    "MemoryUsageStore",
    "RecordingInvoker",
]


class MemoryUsageStore:
    def __init__(self) -> None:
        self._buckets: dict[tuple[str, int], tuple[int, int]] = {}  # (user, start) -> (count, expires_at)
        self._weights: dict[str, int] = {}
        self._queued: dict[str, int] = {}
        self._candidates: dict[str, top_users.Candidate] = {}  # the top-users item
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

    def note_top_user(self, user_id: str, count: int, now: float, window_seconds: int) -> int:
        with self._lock:
            self._candidates[user_id] = top_users.Candidate(user_id, count, now)
            for dropped in top_users.overflow(list(self._candidates.values()), now, window_seconds):
                del self._candidates[dropped.user_id]
            return top_users.floor_of(list(self._candidates.values()), now, window_seconds)

    def top_users(self, now: float, bucket_seconds: int, window_seconds: int, limit: int) -> list[UserUsage]:
        current = policy.bucket_start(now, bucket_seconds)
        with self._lock:
            counts: dict[str, int] = {}
            for (user, start), (n, expires) in self._buckets.items():
                if user in self._candidates and start <= current and policy.is_live(expires, now):
                    counts[user] = counts.get(user, 0) + n
            ranked = sorted((-n, user) for user, n in counts.items() if n > 0)[:limit]
            return [UserUsage(user, -n, self._weights.get(user, 1)) for n, user in ranked]


class MemoryTaskStore:
    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._since: dict[str, float] = {}  # queued since (submit, or the last requeue)
        self._lock = threading.Lock()

    def create(self, task: Task) -> None:
        with self._lock:
            existing = self._tasks.get(task.task_id)
            if existing is not None:
                if (existing.user_id, existing.submitted_at) == (task.user_id, task.submitted_at):
                    return  # written already (a retried write): as it stands
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

    def running_holders(self, now: float) -> dict[int, list[str]]:
        holders: dict[int, list[str]] = {}
        with self._lock:
            for t in self._tasks.values():
                if t.task_status == STARTED and (t.run_lease_until or 0.0) > now:
                    holders.setdefault(t.priority_level, []).append(t.run_holder or "")
        return holders

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
