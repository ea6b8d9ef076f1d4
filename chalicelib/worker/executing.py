"""Executing: run one task at most once and record its outcome."""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable
from typing import Any

from chalicelib import observability
from chalicelib.deps import RECORD_GRACE_SECONDS, Service
from chalicelib.domain import CANCELLED, FAILURE, SUCCESS, QueuedMessage, Task
from chalicelib.ports import ALREADY_FINISHED, LEASE_LOST, MISSING, RUNNING_ELSEWHERE, STARTED_NOW
from chalicelib.tasks import TaskCancelledError, TaskContext
from chalicelib.validation import MAX_X_DEPTH, nesting
from chalicelib.worker.deletes import PendingDeletes

log = logging.getLogger("pqh")

# A task whose worker died this many times while running it is marked FAILURE.
MAX_ATTEMPTS = 3
# A task's outcome write is tried again after these pauses when it fails even
# after botocore's retries: losing it means running an expensive task again.
OUTCOME_RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0)
# Results larger than this are not stored (a DynamoDB item holds 400 KB).
MAX_RESULT_BYTES = 128 * 1024
# A result nests at most one level deeper than the deepest accepted x (the default
# task's result holds x in input_x), so every recorded result reads back.
MAX_RESULT_DEPTH = MAX_X_DEPTH + 1
# A submit sends a task's message while it writes the backlog count and then the
# record, so a worker can receive a message before its record lands (by a
# DynamoDB round trip or two, normally). Younger than RECORD_GRACE_SECONDS (by its
# submit time; chalicelib/deps.py), a message without a record is tried again
# after each of RECORD_RETRY_PAUSES, then given back hidden for as long as it is
# old (RECORD_WAIT_SECONDS at least): a record that lands late waits at most about
# its own age again, and the message of a submit that failed comes back a few
# times (1, 2, 4, ... s), not every second, before it is deleted at the grace. A
# submit that has not written its record by SUBMIT_DEADLINE_SECONDS (half the
# grace) gives up, so no record lands after its message was deleted.
RECORD_RETRY_PAUSES: tuple[float, ...] = (0.05, 0.2)
RECORD_WAIT_SECONDS = 1
# A recorded outcome's log event and metric.
FINISHED_EVENTS = {SUCCESS: "succeeded", FAILURE: "failed", CANCELLED: "cancelled"}
FINISHED_METRICS = {
    SUCCESS: observability.TASKS_SUCCEEDED,
    FAILURE: observability.TASKS_FAILED,
    CANCELLED: observability.TASKS_CANCELLED,
}


class Executor(Service):
    """Starts a task (the start write), runs the task function, records the outcome, deletes or dead-letters."""

    def run_one(
        self,
        level: int,
        message: QueuedMessage,
        counted: bool,
        deletes: PendingDeletes,
        slot_holder: str = "",
        shard: int = 0,
    ) -> str:
        """Run one task at most once and record its outcome."""

        def delete() -> None:
            deletes.add(level, message.receipt_handle)

        run_id = uuid.uuid4().hex
        now = self.clock()
        outcome, task = self.tasks.start(
            message.task_id, run_id, now, now + self.settings.run_lease_seconds, slot_holder
        )
        for pause in RECORD_RETRY_PAUSES:
            if outcome != MISSING or now - message.submitted_at >= RECORD_GRACE_SECONDS:
                break
            self.deps.worker_clock.sleep(pause)  # its record may be landing now
            now = self.clock()
            outcome, task = self.tasks.start(
                message.task_id, run_id, now, now + self.settings.run_lease_seconds, slot_holder
            )
        if counted and (outcome != STARTED_NOW or (task is not None and task.attempts > 1)):
            # This message was a duplicate or a redelivery, and was not counted; the
            # count the pick took belongs to another message of the queue: give it back.
            self.backlog_shard(shard).add_backlog(level, 1)
        if outcome == ALREADY_FINISHED and task is not None and task.task_status == FAILURE:
            # A failed task whose worker died before its message reached the dead
            # letters: it goes there now (at least once: rarely, twice).
            self._to_dead_letters(level, message, task.error or "failed", task.priority_level)
            log.info("dead-lettered task=%s on its redelivery", message.task_id)
            return outcome
        age = now - message.submitted_at
        if outcome == MISSING and age < RECORD_GRACE_SECONDS:
            # Its record may still be landing: it comes again after as long as it is
            # old, so a failed submit's message takes a few picks, not one a second.
            # (The count, if taken, was given back above.)
            hidden = max(RECORD_WAIT_SECONDS, min(math.ceil(age), math.ceil(RECORD_GRACE_SECONDS - age)))
            self.queues.give_back(level, [message.receipt_handle], after_seconds=hidden)
            log.info("gave back task=%s for %ds: it has no record yet", message.task_id, hidden)
            return outcome
        if outcome in (MISSING, ALREADY_FINISHED):
            # A duplicate delivery, or a record that expired: nothing to run.
            delete()
            log.info("skipped task=%s (%s)", message.task_id, outcome)
            return outcome
        if outcome == RUNNING_ELSEWHERE:
            # Leave the message: if that run dies, SQS delivers it again.
            log.info("skipped task=%s (running elsewhere)", message.task_id)
            return outcome
        assert task is not None
        if task.attempts > MAX_ATTEMPTS:
            # Its worker died MAX_ATTEMPTS times while running it (a poison task).
            reason = f"gave up: the worker stopped {task.attempts - 1} times while running this task"
            self.tasks.finish(task.task_id, run_id, FAILURE, now, now + self.settings.result_ttl_seconds, error=reason)
            self._to_dead_letters(level, message, reason, task.priority_level)
            observability.task_event(
                "failed", task.task_id, task.user_id, task.priority_level, status=FAILURE, reason=reason, warning=True
            )
            observability.metrics.count(observability.TASKS_FAILED, task.priority_level)
            return FAILURE
        observability.task_event(
            "started",
            task.task_id,
            task.user_id,
            task.priority_level,
            queue=level,
            wait_seconds=round(now - task.submitted_at, 3),
            attempt=task.attempts,
        )
        observability.metrics.count(observability.TASKS_STARTED, task.priority_level)
        observability.metrics.seconds(observability.WAIT_TIME, now - task.submitted_at, task.priority_level)
        status, result, error = self._execute(task)
        finished_at = self.clock()
        expires_at = finished_at + self.settings.result_ttl_seconds
        recorded = self._patiently(
            lambda: self.tasks.finish(
                task.task_id,
                run_id,
                status,
                finished_at,
                expires_at,
                result=result,
                error=error,
                unless_cancel_requested=status != CANCELLED,
            )
        )
        if not recorded and status != CANCELLED:
            # Someone was answered 202 (asked to stop) and the function finished before it
            # looked: the answer holds. The result is dropped and the task is CANCELLED.
            # One more write, only for a task whose cancel came while it ran.
            recorded = self._patiently(
                lambda: self.tasks.finish(task.task_id, run_id, CANCELLED, finished_at, expires_at)
            )
            if recorded:
                log.info("task=%s finished after a cancel was asked for; recorded CANCELLED", task.task_id)
                status = CANCELLED
        if recorded:
            # One event per outcome, named as the totals name them (succeeded, failed, cancelled).
            observability.task_event(
                FINISHED_EVENTS[status],
                task.task_id,
                task.user_id,
                task.priority_level,
                status=status,
                wait_seconds=round(now - task.submitted_at, 3),
                run_seconds=round(finished_at - now, 3),
                error=error,
                warning=status == FAILURE,
            )
            # Cancelled: one count per stage (rare: a cancel that came while it ran).
            observability.metrics.count(FINISHED_METRICS[status], None if status == CANCELLED else task.priority_level)
            observability.metrics.seconds(observability.RUN_TIME, finished_at - now, task.priority_level)
        else:
            # Another run owns the task now. Its message stays: SQS delivers it again,
            # and that delivery finds the task finished (and drops it) or runs it, so
            # the task is never left STARTED with nobody to finish it.
            log.warning("task=%s lost its run lease before finishing; result not recorded", task.task_id)
            return LEASE_LOST  # not counted in the totals: the run that owns it counts it
        # After the outcome is recorded: a crash between the two leaves a redelivery, not a loss.
        if status == FAILURE:
            self._to_dead_letters(level, message, error or "failed", task.priority_level)
        else:
            delete()
        return status

    def _patiently(self, write: Callable[[], bool]) -> bool:
        """A write that must not be lost, tried again after OUTCOME_RETRY_DELAYS; the last failure raises.

        Safe to repeat: a first try that landed unseen makes the next fail its
        condition (False: the outcome is there, the message is left for SQS).
        """
        for delay in OUTCOME_RETRY_DELAYS:
            try:
                return write()
            except Exception:
                log.warning("outcome write failed; trying again in %.1fs", delay, exc_info=True)
                self.deps.worker_clock.sleep(delay)
        return write()

    def _to_dead_letters(self, level: int, message: QueuedMessage, reason: str, priority_level: int) -> None:
        """A failed task's message goes to its queue's dead-letter queue, for operators to look at or redrive."""
        try:
            self.queues.send_dead(level, message, reason)
        except Exception:  # the task is FAILURE with its reason either way
            log.exception("could not dead-letter task=%s; it stays FAILURE", message.task_id)
        else:
            observability.task_event(
                "dead-lettered", message.task_id, message.user_id, priority_level, queue=level, reason=reason
            )
            observability.metrics.count(observability.DEAD_LETTERS)
        self.queues.delete(level, message.receipt_handle)

    def _execute(self, task: Task) -> tuple[str, Any, str | None]:
        function = self.deps.load_task_function()
        ctx = TaskContext(
            task_id=task.task_id,
            user_id=task.user_id,
            task_seconds=self.settings.task_seconds,
            cancelled=self._cancel_check(task.task_id, task.cancel_requested),
        )
        try:
            result = function(task.x, ctx)
            size = len(json.dumps(result, ensure_ascii=False).encode())
        except TaskCancelledError:
            return CANCELLED, None, None
        except Exception as exc:  # the task's own failure is its result
            return FAILURE, None, f"{type(exc).__name__}: {exc}"
        if size > MAX_RESULT_BYTES:
            return FAILURE, None, f"result is {size} bytes; the limit is {MAX_RESULT_BYTES}"
        if (depth := nesting(result)) > MAX_RESULT_DEPTH:
            return FAILURE, None, f"result nests {depth} levels deep; the limit is {MAX_RESULT_DEPTH}"
        return SUCCESS, result, None

    def _cancel_check(self, task_id: str, requested: bool) -> Callable[[], bool]:
        """ctx.cancelled for a running task: reads the flag at most once a second.

        ``requested`` is the flag as the start write returned it, so the first read
        comes a second into the run: a shorter task reads nothing.
        """
        monotonic = self.deps.worker_clock.monotonic
        last = {"at": monotonic(), "value": requested}

        def cancelled() -> bool:
            if not last["value"] and monotonic() - float(last["at"]) >= 1.0:
                task = self.tasks.get(task_id)
                last["at"], last["value"] = monotonic(), bool(task and task.cancel_requested)
            return bool(last["value"])

        return cancelled
