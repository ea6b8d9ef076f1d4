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
    after another, highest level first, until the queues are empty or its time
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


class PqhError(Exception):
    """Base of errors the API turns into a 4xx response."""

    status = 400
    code = "bad_request"


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
