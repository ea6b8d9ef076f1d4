"""Task records, statuses and the errors services raise for the API to map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PENDING = "PENDING"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
CANCELLED = "CANCELLED"
FINISHED = (SUCCESS, FAILURE, CANCELLED)


@dataclass
class Task:
    """One submitted task; the record (payload included) lives in the task store."""

    task_id: str
    user_id: str
    x: Any
    priority_level: int
    submitted_at: float
    expires_at: int
    task_status: str = PENDING
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: str | None = None
    run_id: str | None = None
    run_lease_until: float | None = None
    run_holder: str | None = None  # the slot holder of the worker running it (for /stats)
    attempts: int = 0
    tag: float = 0.0  # count before / weight at submit: orders tasks inside a level
    cancel_requested: bool = False
    queue_seq: int = 0  # its number in its level's queue, for the queue position

    @property
    def is_finished(self) -> bool:
        return self.task_status in FINISHED


@dataclass(frozen=True)
class Handoff:
    """A capacity slot the dispatcher has claimed and hands to a worker.

    The worker holds the slot (renewing its lease) and runs queued tasks one
    after another, most urgent level first, until the queues are empty or its time
    is up; then it releases the slot.
    """

    slot_id: int
    slot_holder: str
    full_walk: bool = False
    # The backlog state the dispatcher read (policy.backlog_to_payload): the worker's
    # first pick starts from it instead of reading it again. Only a hint: a pick
    # from a stale state fails its condition and gets the current state back.
    backlog: dict[str, Any] | None = None

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "slot_id": self.slot_id,
            "slot_holder": self.slot_holder,
            "full_walk": self.full_walk,
        }
        if self.backlog is not None:
            payload["backlog"] = self.backlog
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Handoff:
        try:
            backlog = payload.get("backlog")
            return cls(
                slot_id=int(payload["slot_id"]),
                slot_holder=str(payload["slot_holder"]),
                full_walk=bool(payload.get("full_walk", False)),
                backlog=backlog if isinstance(backlog, dict) else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadHandoffError(f"worker payload is missing or has a bad field: {exc}") from exc


@dataclass(frozen=True)
class QueuedMessage:
    """A received message: the task id plus who and when, for logs and fairness."""

    task_id: str
    receipt_handle: str
    user_id: str = ""
    submitted_at: float = 0.0
    tag: float = 0.0  # the user's charged usage at submit (count before / weight)
    reason: str = ""  # why it is a dead letter (dead-letter queues only)


@dataclass(frozen=True)
class TaskSummary:
    """A finished task as the dashboard lists it (no payload, no result)."""

    task_id: str
    user_id: str
    task_status: str
    priority_level: int
    submitted_at: float
    started_at: float | None
    finished_at: float
    error: str | None = None

    @property
    def wait_seconds(self) -> float | None:
        return None if self.started_at is None else max(0.0, self.started_at - self.submitted_at)

    @property
    def run_seconds(self) -> float | None:
        return None if self.started_at is None else max(0.0, self.finished_at - self.started_at)


@dataclass(frozen=True)
class QueueDepth:
    """Approximate message counts of one level's queue and of its dead-letter queue."""

    level: int
    queued: int
    in_flight: int
    dead: int


@dataclass(frozen=True)
class UserUsage:
    user_id: str
    count_in_window: int
    weight: int


@dataclass(frozen=True)
class Submitted:
    """A submit's answer: what a retry with the same Idempotency-Key gets back."""

    task_id: str
    user_id: str
    priority_level: int
    task_status: str

    @classmethod
    def of(cls, task: Task) -> Submitted:
        return cls(task.task_id, task.user_id, task.priority_level, task.task_status)

    def to_record(self) -> dict[str, Any]:
        """As the idempotency store keeps it (plain JSON)."""
        return {
            "task_id": self.task_id,
            "user_id": self.user_id,
            "priority_level": self.priority_level,
            "task_status": self.task_status,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Submitted:
        return cls(
            str(record["task_id"]), str(record["user_id"]), int(record["priority_level"]), str(record["task_status"])
        )


@dataclass(frozen=True)
class UserStanding:
    """A user's usage in the window, weight, and the priority level their next submit gets."""

    user_id: str
    count_in_window: int
    weight: int
    next_priority_level: int


@dataclass(frozen=True)
class IssuedKey:
    """A new API key: the key itself is shown once; only its id (SHA-256) is stored."""

    api_key: str
    key_id: str
    user_id: str
    admin: bool


@dataclass(frozen=True)
class DeadLetter:
    task_id: str
    user_id: str
    reason: str
    task_status: str | None  # None when the task record is gone


@dataclass(frozen=True)
class DeadLetters:
    """A look at one queue's dead letters: how many there are, and a few of them."""

    level: int
    dead_letters: int
    messages: list[DeadLetter]


@dataclass(frozen=True)
class QueueStats:
    level: int
    queued: int
    running: int  # started, not finished, its worker's slot lease live
    received_not_deleted: int  # SQS's in-flight count: includes held tasks and batched deletes
    counted: int  # the queue's count in the backlog record
    dead_letters: int
    oldest_seconds: float | None  # age of the oldest queued task


@dataclass(frozen=True)
class TaskTotals:
    submitted: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    dead_letters: int


@dataclass(frozen=True)
class UserStats:
    user_id: str
    count_in_window: int
    weight: int
    priority_level: int
    queued: int


@dataclass(frozen=True)
class Stats:
    """What the dashboard shows: queues, capacity, totals, top users, recent tasks."""

    generated_at: float
    policy: str
    capacity: int
    slots_held: int  # held by a live worker lease (a worker runs one task at a time on its slot)
    queues: list[QueueStats]
    tasks: TaskTotals
    users: list[UserStats]
    users_truncated: bool
    recent: list[TaskSummary]
    wait_p50: float | None
    wait_p90: float | None
    wait_max: float | None
    run_seconds_average: float | None


class PqhError(Exception):
    """Base of errors the API turns into a 4xx response."""

    status = 400
    code = "bad_request"


class UnavailableError(PqhError):
    """AWS did not answer in time: nothing of the request stands; retry shortly."""

    status = 503
    code = "unavailable"


class ValidationError(PqhError):
    status = 400
    code = "invalid_request"


class PayloadTooLargeError(PqhError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(PqhError):
    status = 415
    code = "unsupported_media_type"


class NotFoundError(PqhError):
    status = 404
    code = "not_found"


class ConflictError(PqhError):
    status = 409
    code = "conflict"


class ForbiddenError(PqhError):
    status = 403
    code = "forbidden"


class UnauthorizedError(PqhError):
    status = 401
    code = "unauthorized"


class TooManyQueuedError(PqhError):
    """The user has PQH_MAX_QUEUED_PER_USER tasks queued; answered 429 with Retry-After."""

    status = 429
    code = "too_many_queued"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IdempotencyConflictError(PqhError):
    status = 409
    code = "idempotency_in_progress"


class IdempotencyMismatchError(PqhError):
    status = 422
    code = "idempotency_key_reused"


@dataclass(frozen=True)
class Identity:
    """Who is calling, as the API-key authorizer established it."""

    user_id: str
    admin: bool = False


class BadHandoffError(Exception):
    """The worker was invoked with a payload the dispatcher did not build."""
