"""Services: submit, report, dispatch and run. They combine the policy with the ports."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chalicelib import policy
from chalicelib.domain import FAILURE, SUCCESS, Handoff, NotFoundError, Task
from chalicelib.ports import (
    ALREADY_FINISHED,
    MISSING,
    RUNNING_ELSEWHERE,
    ControlStore,
    Invoker,
    TaskQueues,
    TaskStore,
    UsageStore,
)
from chalicelib.settings import Settings
from chalicelib.tasks import TaskContext, TaskFunction, load_task_function
from chalicelib.validation import is_task_id

log = logging.getLogger("pqh")

# The dispatcher's lock lease; the dispatcher Lambda's timeout (60 s) is shorter.
DISPATCH_LOCK_SECONDS = 75
# A dispatcher that keeps being asked to rerun hands over after this many passes.
MAX_DISPATCH_PASSES = 50
# Results larger than this are not stored (a DynamoDB item holds 400 KB).
MAX_RESULT_BYTES = 128 * 1024


@dataclass
class DispatchReport:
    started: int = 0
    passes: int = 0
    locked_out: bool = False
    started_by_level: list[int] = field(default_factory=lambda: [0] * policy.LEVELS)


@dataclass
class Services:
    settings: Settings
    usage: UsageStore
    tasks: TaskStore
    queues: TaskQueues
    control: ControlStore
    invoker: Invoker
    clock: Callable[[], float] = time.time
    task_function: TaskFunction | None = None

    # --- submit -----------------------------------------------------------

    def submit(self, user_id: str, x: Any) -> Task:
        """Count the submission, pick its level, store it, queue it, nudge the dispatcher."""
        s = self.settings
        now = self.clock()
        count_before, weight = self.usage.record_submission(user_id, now, s.bucket_seconds, s.window_seconds)
        level = policy.level_for(count_before, weight, s.thresholds)
        task = Task(
            task_id=str(uuid.uuid4()),
            user_id=user_id,
            x=x,
            priority_level=level,
            submitted_at=now,
            expires_at=int(now) + s.result_ttl_seconds,
        )
        self.tasks.create(task)
        try:
            self.queues.send(level, task)
        except Exception:
            # Not queued means not accepted: drop the record so no PENDING task is orphaned.
            self.tasks.delete(task.task_id)
            raise
        self.control.add_backlog(level, 1)
        log.info(
            "submitted task=%s user=%s level=%d count_before=%d weight=%d",
            task.task_id,
            user_id,
            level,
            count_before,
            weight,
        )
        self._nudge_dispatcher()
        return task

    def _nudge_dispatcher(self) -> None:
        try:
            self.invoker.trigger_dispatch()
        except Exception:  # the scheduled tick is the safety net
            log.exception("could not trigger the dispatcher; the next tick will dispatch")

    # --- report -----------------------------------------------------------

    def result(self, task_id: str) -> Task:
        task = self.tasks.get(task_id) if is_task_id(task_id) else None
        if task is None or not policy.is_live(task.expires_at, self.clock()):
            raise NotFoundError(f"no task with id {task_id!r} (it never existed or its result has expired)")
        return task

    def set_weight(self, user_id: str, weight: int) -> None:
        self.usage.set_weight(user_id, weight)
        log.info("weight user=%s weight=%d", user_id, weight)

    def user_usage(self, user_id: str) -> dict[str, Any]:
        s = self.settings
        count, weight = self.usage.usage(user_id, self.clock(), s.bucket_seconds, s.window_seconds)
        return {
            "user_id": user_id,
            "count_in_window": count,
            "weight": weight,
            "next_priority_level": policy.level_for(count, weight, s.thresholds),
        }

    # --- dispatch ---------------------------------------------------------

    def dispatch(self, full_walk: bool = False) -> DispatchReport:
        """Start queued tasks into free slots, highest level first. One dispatcher at a time.

        A dispatcher that finds the lock held asks the holder to run once more, so
        no trigger is lost; the holder releases only when no rerun is pending.
        """
        report = DispatchReport()
        holder = str(uuid.uuid4())
        if not self._acquire_lock(holder):
            self.control.request_dispatch_rerun()
            # The holder may have released just before our request: try once more.
            if not self._acquire_lock(holder):
                report.locked_out = True
                return report
        try:
            while True:
                self._dispatch_pass(report, full_walk)
                report.passes += 1
                if report.passes >= MAX_DISPATCH_PASSES:
                    self.control.release_dispatch_lock(holder, force=True)
                    self._nudge_dispatcher()
                    break
                if self.control.release_dispatch_lock(holder):
                    break
        except Exception:
            self.control.release_dispatch_lock(holder, force=True)
            raise
        return report

    def _acquire_lock(self, holder: str) -> bool:
        now = self.clock()
        return self.control.acquire_dispatch_lock(holder, now, now + DISPATCH_LOCK_SECONDS)

    def _dispatch_pass(self, report: DispatchReport, full_walk: bool) -> None:
        s = self.settings
        now = self.clock()
        free = policy.free_slots(self.control.slots(s.capacity), s.capacity, now)
        if not free:
            return
        backlog = self.control.backlog()
        for level in policy.dispatch_order(backlog, full_walk):
            while free:
                messages = self.queues.receive(level, len(free), wait_seconds=0)
                if not messages and backlog[level] > 0:
                    # A short poll samples some SQS servers and may come back empty
                    # while the level has tasks; a long poll asks them all.
                    messages = self.queues.receive(level, len(free), wait_seconds=1)
                if not messages:
                    if backlog[level] > 0:
                        # Counted but not visible: gone to a DLQ or held by a dead
                        # dispatcher (the tick finds those when they reappear).
                        self.control.reset_backlog(level, backlog[level])
                    break
                started = self._hand_off(level, messages, free, now)
                if started:
                    self.control.add_backlog(level, -started)
                backlog[level] = max(0, backlog[level] - started)
                report.started += started
                report.started_by_level[level] += started
                if backlog[level] == 0 and not full_walk:
                    break
            if not free:
                break

    def _hand_off(self, level: int, messages: list[Any], free: list[int], now: float) -> int:
        """Claim a slot per message and invoke the worker; give back what cannot start."""
        started = 0
        for index, message in enumerate(messages):
            slot_id = free.pop(0)
            holder = f"{message.task_id}/{uuid.uuid4().hex[:8]}"
            if not self.control.claim_slot(slot_id, holder, now, now + self.settings.lease_seconds):
                # Someone else holds it (only possible if capacity was changed under us).
                self.queues.give_back(level, [m.receipt_handle for m in messages[index:]])
                free.clear()
                return started
            handoff = Handoff(message.task_id, level, slot_id, holder, message.receipt_handle)
            try:
                self.invoker.start_worker(handoff)
            except Exception:
                log.exception("could not hand task %s to a worker; it stays queued", message.task_id)
                self.control.release_slot(slot_id, holder)
                self.queues.give_back(level, [m.receipt_handle for m in messages[index:]])
                free.clear()
                return started
            started += 1
            log.info(
                "dispatched task=%s user=%s level=%d slot=%d wait=%.3fs",
                message.task_id,
                message.user_id,
                level,
                slot_id,
                now - message.submitted_at if message.submitted_at else 0.0,
            )
        return started

    # --- run --------------------------------------------------------------

    def run(self, handoff: Handoff) -> str:
        """Run one handed-off task at most once, record its outcome, free the slot."""
        s = self.settings
        run_id = uuid.uuid4().hex
        now = self.clock()
        outcome, task = self.tasks.start(handoff.task_id, run_id, now, now + s.lease_seconds)
        try:
            if outcome in (MISSING, ALREADY_FINISHED):
                # A duplicate delivery, or a record that expired: nothing to run.
                self.queues.delete(handoff.level, handoff.receipt_handle)
                log.info("skipped task=%s (%s)", handoff.task_id, outcome)
                return outcome
            if outcome == RUNNING_ELSEWHERE:
                # Leave the message: if that run dies, SQS delivers it again.
                log.info("skipped task=%s (running elsewhere)", handoff.task_id)
                return outcome
            assert task is not None
            log.info(
                "started task=%s user=%s level=%d wait=%.3fs attempt=%d",
                task.task_id,
                task.user_id,
                task.priority_level,
                now - task.submitted_at,
                task.attempts,
            )
            status, result, error = self._execute(task)
            finished_at = self.clock()
            if self.tasks.finish(task.task_id, run_id, status, finished_at, result=result, error=error):
                log.info(
                    "finished task=%s user=%s status=%s wait=%.3fs run=%.3fs",
                    task.task_id,
                    task.user_id,
                    status,
                    now - task.submitted_at,
                    finished_at - now,
                )
            else:
                log.warning("task=%s lost its run lease before finishing; result not recorded", task.task_id)
            self.queues.delete(handoff.level, handoff.receipt_handle)
            return status
        finally:
            self.control.release_slot(handoff.slot_id, handoff.slot_holder)
            self._nudge_dispatcher()

    def _execute(self, task: Task) -> tuple[str, Any, str | None]:
        if self.task_function is None:
            self.task_function = load_task_function(self.settings.task_function)
        ctx = TaskContext(task_id=task.task_id, user_id=task.user_id, task_seconds=self.settings.task_seconds)
        try:
            result = self.task_function(task.x, ctx)
            size = len(json.dumps(result))
        except Exception as exc:  # the task's own failure is its result
            return FAILURE, None, f"{type(exc).__name__}: {exc}"
        if size > MAX_RESULT_BYTES:
            return FAILURE, None, f"result is {size} bytes; the limit is {MAX_RESULT_BYTES}"
        return SUCCESS, result, None
