"""Structured logs and metrics: one Powertools Logger and one metric buffer for every function.

On Lambda each log line is JSON (CloudWatch Logs Insights reads it by field) with
the invocation's request id and cold start; a task event also carries
``task_id``, ``user_id`` and ``priority_level`` (not ``level``: Powertools and
Lambda's log-level filter own that key). Metrics go out in CloudWatch's embedded
metric format (EMF) on stdout, so they cost no API call and no IAM permission.
Locally (``make run``) ``readable_logs`` turns the same events into one short
line each, and the runner turns metrics off (``POWERTOOLS_METRICS_DISABLED``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

SERVICE = "pqh"  # the app's name: its logger ("pqh", and "pqh.*" below it) and the metrics' namespace
NAMESPACE = "pqh"
DEFAULT_STAGE = "local"

# Metric names (docs/operating-aws.md lists them with their units and dimensions).
TASKS_SUBMITTED = "TasksSubmitted"
TASKS_STARTED = "TasksStarted"
TASKS_SUCCEEDED = "TasksSucceeded"
TASKS_FAILED = "TasksFailed"
TASKS_CANCELLED = "TasksCancelled"
WAIT_TIME = "WaitTime"  # start - submit
RUN_TIME = "RunTime"
DEAD_LETTERS = "DeadLetters"
TASKS_GIVEN_BACK = "TasksGivenBack"
THROTTLES = "Throttles"
PICK_RACES_LOST = "PickRacesLost"  # a pick's conditional write found the backlog record moved on
SLOT_RACES_LOST = "SlotClaimsLost"  # a dispatcher's slot claim found the slot taken

# AWS's throttling error codes, as botocore's standard retry mode classifies them.
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)


def stage() -> str:
    """The deployment stage (PQH_STAGE, set per stage in .chalice/config.json), read when asked for."""
    return os.environ.get("PQH_STAGE", "").strip() or DEFAULT_STAGE


class _CurrentStdout(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stdout`` as it is at each line (Lambda's, the local runner's, a test's capture)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


logger = Logger(service=SERVICE, logger_handler=_CurrentStdout(), utc=True)
# One handler for the "pqh" tree: nothing reaches the root logger's, so nothing prints twice.
logging.getLogger(SERVICE).propagate = False

# Keys a task event always has (shown on the terminal as task=, user=, level=).
_SHORT = {"task_id": "task", "user_id": "user", "priority_level": "level"}
# Keys the terminal leaves out: the same on every line, or in the line's prefix.
_NOT_SHOWN = {
    "level",
    "location",
    "message",
    "timestamp",
    "service",
    "name",
    "sampling_rate",
    "cold_start",
    "function_name",
    "function_memory_size",
    "function_arn",
    "function_request_id",
    "stage",
    "xray_trace_id",
    "exception",
    "exception_name",
    "exception_notes",
    "stack_trace",
}


def task_event(event: str, task_id: str, user_id: str, priority_level: int | None, **fields: Any) -> None:
    """One line per task event (submitted, started, succeeded, failed, ...): the message is the event's name."""
    log = logger.warning if fields.pop("warning", False) else logger.info
    extra = {"task_id": task_id, "user_id": user_id, "priority_level": priority_level, **fields}
    log(event, extra={k: v for k, v in extra.items() if v is not None}, stacklevel=3)  # the caller's location


# --- Lambda invocations ---------------------------------------------------------

_cold = threading.Lock()
_warm = False


def _cold_start() -> bool:
    """True for this process's first invocation (never under provisioned concurrency)."""
    global _warm
    with _cold:
        first, _warm = not _warm, True
    return first and os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") != "provisioned-concurrency"


@contextlib.contextmanager
def invocation(context: Any) -> Iterator[None]:
    """One Lambda invocation: its request id and cold start on every line it logs, its metrics flushed at the end.

    The keys are per thread (the local runner and the test client run invocations
    on several threads of one process); Powertools' ``inject_lambda_context``
    keeps them for the whole process.
    """
    keys = {"cold_start": _cold_start(), "stage": stage()}
    if context is not None:
        keys.update(
            function_name=getattr(context, "function_name", None),
            function_memory_size=getattr(context, "memory_limit_in_mb", None),
            function_arn=getattr(context, "invoked_function_arn", None) or None,
            function_request_id=getattr(context, "aws_request_id", None),
        )
    logger.thread_safe_append_keys(**{k: v for k, v in keys.items() if v is not None})
    try:
        yield
    finally:
        try:
            metrics.flush()
        finally:
            logger.thread_safe_clear_keys()


def chalice_middleware(event: Any, get_response: Callable[[Any], Any]) -> Any:
    """Chalice middleware for every handler: a route's Request has ``lambda_context``, other events ``context``."""
    context = getattr(event, "lambda_context", None) if hasattr(event, "lambda_context") else event.context
    with invocation(context):
        return get_response(event)


# --- Metrics ----------------------------------------------------------------------


class Metrics:
    """This process's metrics until its invocation ends: counts summed, times kept one by one (for percentiles).

    ``flush`` prints one EMF blob per dimension set used (the stage alone, or the
    stage and a priority level) and nothing when there is nothing to say.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int | None], float] = {}
        self._times: dict[tuple[str, int | None], list[float]] = {}

    def count(self, name: str, priority_level: int | None = None, value: float = 1) -> None:
        with self._lock:
            key = (name, priority_level)
            self._counts[key] = self._counts.get(key, 0) + value

    def seconds(self, name: str, value: float, priority_level: int | None = None) -> None:
        with self._lock:
            self._times.setdefault((name, priority_level), []).append(max(0.0, value))

    def discard(self) -> None:
        """Forget what was recorded (a process with no invocation to flush at: tests, benchmarks)."""
        with self._lock:
            self._counts, self._times = {}, {}

    def flush(self) -> None:
        """Print what was recorded as EMF (unless metrics are off) and start afresh."""
        with self._lock:
            counts, self._counts = self._counts, {}
            times, self._times = self._times, {}
        if not (counts or times) or is_metrics_disabled():
            return
        levels = sorted({level for _, level in (*counts, *times)}, key=lambda level: -1 if level is None else level)
        for level in levels:
            blob = EphemeralMetrics(namespace=NAMESPACE, service="")
            dimensions = {"stage": stage()}
            if level is not None:
                dimensions["priority_level"] = str(level)
            blob.set_default_dimensions(**dimensions)
            for (name, at), value in sorted(counts.items(), key=lambda item: item[0][0]):
                if at == level:
                    blob.add_metric(name=name, unit=MetricUnit.Count, value=value)
            for (name, at), values in sorted(times.items(), key=lambda item: item[0][0]):
                if at == level:
                    for value in values:
                        blob.add_metric(name=name, unit=MetricUnit.Seconds, value=value)
            blob.flush_metrics()


metrics = Metrics()


# --- AWS throttles ------------------------------------------------------------------


def count_throttles(client: Any) -> None:
    """Count and log every throttled AWS call of ``client``, retried or not (botocore retries most)."""

    def on_response(response: Any = None, attempts: int = 0, operation: Any = None, **_: Any) -> None:
        parsed = response[1] if isinstance(response, tuple) and len(response) > 1 else None
        code = (parsed or {}).get("Error", {}).get("Code") if isinstance(parsed, dict) else None
        if code in THROTTLING_CODES:
            metrics.count(THROTTLES)
            logger.warning(
                "AWS throttled a call",
                extra={
                    "aws_service": client.meta.service_model.service_name,
                    "operation": getattr(operation, "name", None),
                    "error_code": code,
                    "attempt": attempts,
                },
            )

    client.meta.events.register("needs-retry", on_response)


# --- Locally --------------------------------------------------------------------------


class ReadableFormatter(LambdaPowertoolsFormatter):
    """The same log records as one short line each, for a terminal: time, logger, function, message, fields."""

    def __init__(self) -> None:
        super().__init__(datefmt="%H:%M:%S.%F", name="%(name)s")

    def serialize(self, log: Any) -> str:
        parts = [str(log.get("timestamp", "")), str(log.get("name", SERVICE))]
        if log.get("function_name"):
            parts[-1] += f"[{log['function_name']}]"
        if log.get("level") not in (None, "INFO", "DEBUG"):
            parts.append(str(log["level"]))
        parts.append(str(log.get("message", "")))
        same_queue = log.get("queue") is not None and log.get("queue") == log.get("priority_level")
        parts += [
            f"{_SHORT.get(k, k)}={_value(v)}"
            for k, v in log.items()
            if k not in _NOT_SHOWN and not (k == "queue" and same_queue)
        ]
        line = " ".join(parts)
        if log.get("exception"):
            line += "\n" + str(log["exception"])
        return line


def _value(value: Any) -> str:
    """A field's value on the terminal: quoted when it has spaces, so the next key=value stands out."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c.isspace() for c in text) or not text else text


def readable_logs() -> None:
    """Log one readable line per record on the terminal (the local runner), not JSON."""
    logger.registered_handler.setFormatter(ReadableFormatter())
