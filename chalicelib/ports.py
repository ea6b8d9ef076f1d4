"""The ports services talk to. Adapters are named after technology and port."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from chalicelib.domain import Handoff, QueueDepth, QueuedMessage, Task, TaskSummary, UserUsage
from chalicelib.policy import Backlog, Slot

# Outcomes of TaskStore.start
STARTED_NOW = "started"  # this run owns the task
ALREADY_FINISHED = "finished"  # a duplicate delivery of a finished task
RUNNING_ELSEWHERE = "running"  # another run holds a live lease on it
MISSING = "missing"  # no such task (expired or never created)
LEASE_LOST = "lease lost"  # ran, but its run lease ran out first: another run records the outcome


class QueuedLimitError(Exception):
    """A submission not counted: the user's queued counter is at the limit (it may be stale: see set_queued)."""

    def __init__(self, counted: int) -> None:
        super().__init__(f"the user's queued counter is at {counted}")
        self.counted = counted


class UsageStore(Protocol):
    def record_submission(
        self, user_id: str, now: float, bucket_seconds: int, window_seconds: int, max_queued: int | None = None
    ) -> tuple[int, int]:
        """Count one submission atomically; return (count before it, weight).

        The user's queued counter goes up in the same write; with ``max_queued``, a
        counter already at it raises QueuedLimitError and nothing is counted. The
        counter is an upper bound of the user's queued tasks: nothing lowers it when
        a task starts, only set_queued, when the limit is reached.
        """

    def set_queued(self, user_id: str, seen: int, value: int) -> bool:
        """Set the queued counter to ``value`` if it is still ``seen``; False if it moved meanwhile."""

    def usage(self, user_id: str, now: float, bucket_seconds: int, window_seconds: int) -> tuple[int, int]:
        """Return (count in the window, weight) without counting anything."""

    def set_weight(self, user_id: str, weight: int, now: float, bucket_seconds: int, window_seconds: int) -> None:
        """The weight every later submission of the user reads (1 is the default)."""

    def refund(self, user_id: str, submitted_at: float, now: float, bucket_seconds: int, window_seconds: int) -> bool:
        """Take back one submission made at ``submitted_at``, if its bucket still counts."""

    def note_top_user(self, user_id: str, count: int, now: float, window_seconds: int) -> int:
        """Note the user as a top-users candidate with this count in the window (chalicelib/top_users.py).

        The list keeps the top_users.KEPT highest noted counts (a note older than the
        window ranks last); returns its floor (0 while it has room).
        """

    def top_users(self, now: float, bucket_seconds: int, window_seconds: int, limit: int) -> list[UserUsage]:
        """The candidates with the most submissions in the window, most first, their counts read from their counters."""


class TaskStore(Protocol):
    def create(self, task: Task) -> None:
        """Write a new task's record. Its record there already (a retried write whose
        first answer was lost) is left as it stands; another task's with the id raises."""

    def get(self, task_id: str) -> Task | None: ...

    def delete(self, task_id: str) -> None: ...

    def cancel_pending(self, task_id: str, now: float, expires_at: float) -> bool:
        """PENDING -> CANCELLED; False if the task is not PENDING (any more)."""

    def request_cancel(self, task_id: str) -> bool:
        """Flag a STARTED task for its worker to stop; False if it is not STARTED."""

    def start(
        self, task_id: str, run_id: str, now: float, lease_until: float, slot_holder: str = ""
    ) -> tuple[str, Task | None]:
        """Mark STARTED (by the worker holding ``slot_holder``) unless finished or running under a live lease."""

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
        """Record the final status if ``run_id`` still owns the task; never overwrite a finished one.

        With ``unless_cancel_requested``, also False when someone asked the task to stop.
        """

    def requeue(self, task_id: str, queue_seq: int, expires_at: float, now: float) -> Task | None:
        """FAILURE -> PENDING with its attempts reset (a dead letter redriven); None if not FAILURE."""

    def recent(self, now: float, limit: int) -> list[TaskSummary]:
        """The last finished tasks, newest first (from a sparse index: eventually consistent)."""

    def oldest_queued(self, level: int) -> float | None:
        """When the longest-queued task of priority ``level`` was queued (submitted or requeued)."""

    def queued_before(self, level: int, before: float, limit: int) -> list[Task]:
        """PENDING tasks of ``level`` queued before ``before``, oldest first (ids, users, times; no payload)."""

    def mark_requeued(self, task_id: str, now: float, expires_at: float) -> bool:
        """Record that a PENDING task's message was sent again at ``now``; False if no longer PENDING."""

    def queued_count(self, user_id: str) -> int:
        """How many of the user's tasks are PENDING (from a sparse index: eventually consistent)."""

    def running_holders(self, now: float) -> dict[int, list[str]]:
        """Slot holders of the STARTED tasks with a live run lease, by priority level (a sparse index, read whole)."""


class TaskQueues(Protocol):
    def send(self, level: int, task: Task) -> None: ...

    def receive(self, level: int, max_count: int, wait_seconds: int) -> list[QueuedMessage]: ...

    def delete(self, level: int, receipt_handle: str) -> None: ...

    def delete_many(self, level: int, receipt_handles: list[str]) -> None:
        """Delete received messages, ten per request; a handle that has gone stale is skipped."""

    def give_back(self, level: int, receipt_handles: list[str], after_seconds: int = 0) -> None:
        """Make received messages visible again, at once or after ``after_seconds``."""

    def depths(self) -> list[QueueDepth]:
        """Approximate depth of every level's queue and dead-letter queue."""

    def send_dead(self, level: int, message: QueuedMessage, reason: str) -> None:
        """Put a copy of ``message`` on the level's dead-letter queue (the caller deletes the original)."""

    def receive_dead(self, level: int, max_count: int, hide_seconds: int) -> list[QueuedMessage]:
        """Read dead letters; ``hide_seconds=0`` only looks, leaving them visible."""

    def delete_dead(self, level: int, receipt_handle: str) -> None: ...

    def purge_dead(self, level: int) -> int:
        """Empty the level's dead-letter queue; return about how many it held."""


class ControlStore(Protocol):
    """Capacity slots and the per-level backlog counts.

    The backlog methods act on one backlog record: shard 0's, or the one of the
    view ``shard(k)`` returns (policy/shards.py). The slot methods are the same on
    every view.
    """

    def slots(self, capacity: int) -> list[Slot]: ...

    def slots_and_backlog(self, capacity: int) -> tuple[list[Slot], Backlog]:
        """The slots and this view's backlog state, in one read."""

    def slots_and_backlogs(self, capacity: int, shards: int) -> tuple[list[Slot], list[Backlog]]:
        """The slots and every shard's backlog state (shard 0 first), in one read (a dispatcher run, /stats)."""

    def backlogs(self, shards: int) -> list[Backlog]:
        """Every shard's backlog state, shard 0 first, in one read."""

    def backlogs_of(self, shards: Sequence[int]) -> list[Backlog]:
        """The named shards' backlog states, in that order, in one read."""

    def shard(self, shard: int) -> ControlStore:
        """A view whose backlog methods act on shard ``shard``'s record (this one for its own shard)."""

    def claim_slot(self, slot_id: int, holder: str, now: float, lease_until: float) -> bool: ...

    def take_over_slot(self, slot_id: int, holder: str, new_holder: str, now: float, lease_until: float) -> bool:
        """Move a live slot from ``holder`` to ``new_holder``; False if not held by ``holder`` any more."""

    def renew_slot(self, slot_id: int, holder: str, lease_until: float) -> bool: ...

    def release_slot(self, slot_id: int, holder: str, tallies: Sequence[int] = ()) -> bool:
        """Free the slot if ``holder`` holds it, adding ``tallies`` (finished tasks) to the slot's."""

    def backlog(self) -> Backlog: ...

    def add_backlog(self, level: int, delta: int, tallies: Sequence[int] = ()) -> int:
        """Add to a level's queued count, and to the finished tallies (policy.TALLIES order); return the count."""

    def enqueue(self, level: int, again: bool = False) -> tuple[int, int]:
        """Count one more task queued at ``level``, in one write.

        Returns (the level's count now, the task's sequence number in the level's queue).
        ``again``: a task submitted before (a redrive); its new number is also counted
        withdrawn, so the submitted total counts the task once.
        """

    def withdraw(self, level: int) -> None:
        """Take back an ``enqueue`` whose task was never queued, in one write.

        The level's count goes down; the sequence number stays used (another task may
        have the next one) and is counted withdrawn, so it is not in the submitted total.
        """

    def commit_pick(
        self, seen: Backlog, after: Backlog, takes: Mapping[int, int], tallies: Sequence[int] = ()
    ) -> tuple[bool, Backlog]:
        """Take tasks off the counts: store ``after`` if the state is still ``seen``.

        ``takes`` is {level: tasks}; each level must still count that many, all
        in one conditional write.

        ``tallies`` (finished tasks not yet counted) are added with the same write.

        Returns (taken, the state now): the new one, or the current one to retry from.
        """


class KeyStore(Protocol):
    """API keys, stored by the SHA-256 of the key: the key itself is never stored."""

    def put_key(self, key_hash: str, user_id: str, admin: bool, now: float) -> None: ...

    def get_key(self, key_hash: str) -> tuple[str, bool] | None:
        """(user_id, admin) of a key, or None."""

    def delete_key(self, key_hash: str) -> bool:
        """False if there was no such key."""


class Idempotency(Protocol):
    def run(
        self, user_id: str, key: str, x: Any, action: Callable[[], dict[str, Any]], lambda_context: Any = None
    ) -> tuple[dict[str, Any], bool]:
        """Run ``action`` once per (user_id, key); return (its answer, whether this was a replay).

        The same key with another ``x`` raises IdempotencyMismatchError; while the
        first call runs, IdempotencyConflictError.
        """


class Invoker(Protocol):
    def start_worker(self, handoff: Handoff) -> None:
        """Start a worker on a claimed slot (asynchronously)."""

    def trigger_dispatch(self) -> None: ...


class AdminTokenSource(Protocol):
    def admin_token(self) -> str:
        """The current admin token ('' when admin routes are disabled); may be cached for a few minutes."""
