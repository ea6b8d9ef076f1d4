"""Results and cancelling: a task's record, its place in its queue, and cancelling it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from chalicelib import observability, policy
from chalicelib.deps import Service
from chalicelib.domain import CANCELLED, PENDING, STARTED, ConflictError, Identity, NotFoundError, Task
from chalicelib.tasks import supports_cancel
from chalicelib.validation import is_task_id

log = logging.getLogger("pqh")


@dataclass(frozen=True)
class Progress:
    queue_position: int  # queued tasks the policy will start first (approximate)
    eta_seconds: float  # expected wait before it starts


class Results(Service):
    def result(self, task_id: str, caller: Identity | None = None) -> Task:
        """The task, if it exists, is live, and (with API keys) is the caller's; else 404."""
        task = self.tasks.get(task_id) if is_task_id(task_id) else None
        if (
            task is None
            or not policy.is_live(task.expires_at, self.clock())
            or (caller is not None and not caller.admin and task.user_id != caller.user_id)
        ):
            # Another user's task answers exactly as a missing one: ids reveal nothing.
            raise NotFoundError(f"no task with id {task_id!r} (it never existed or its result has expired)")
        return task

    def progress(self, task: Task) -> Progress | None:
        """Queue position and ETA of a queued task; one DynamoDB GetItem, no queue scan."""
        if task.task_status != PENDING or not task.queue_seq:
            return None
        s = self.settings
        # Its shard's record: the policy's order there, run by that shard's share of
        # the slots; as many tasks start meanwhile in each other shard (about).
        backlog = self.task_shard(task.task_id).backlog()
        shards = s.backlog_shards
        found = policy.estimate(
            backlog,
            policy.queue_level(task.priority_level, s.policy),
            task.queue_seq,
            self.clock(),
            policy_name=s.policy,
            capacity=max(1, s.capacity // shards),
            run_seconds=backlog.run_seconds or s.task_seconds,
            shares=s.shares,
            floor_picks=s.floor_picks,
        )
        return Progress(found.position * shards, found.eta_seconds)

    def cancel(self, task_id: str, caller: Identity | None = None) -> Task:
        """Cancel a queued task, or ask a running one to stop; 409 when neither can be done.

        A queued task is cancelled with a conditional write (PENDING -> CANCELLED),
        so it races safely with a worker's start (PENDING -> STARTED): exactly one
        wins. It is taken out of the user's usage window and its queue's count.
        """
        s = self.settings
        task = self.result(task_id, caller)
        now = self.clock()
        if task.task_status == PENDING:
            if self.tasks.cancel_pending(task.task_id, now, now + s.result_ttl_seconds):
                try:  # the cancel stands even if these fail: they are bookkeeping
                    self.usage.refund(task.user_id, task.submitted_at, now, s.bucket_seconds, s.window_seconds)
                    self.task_shard(task.task_id).add_backlog(
                        policy.queue_level(task.priority_level, s.policy), -1, policy.tally(CANCELLED)
                    )
                except Exception:
                    log.exception("task=%s cancelled, but its usage or count was not taken back", task.task_id)
                observability.task_event("cancelled", task.task_id, task.user_id, task.priority_level, status=CANCELLED)
                observability.metrics.count(observability.TASKS_CANCELLED)
                return self.result(task_id)
            task = self.result(task_id)  # a worker started it meanwhile
        if task.task_status == STARTED:
            if not supports_cancel(self.deps.load_task_function()):
                raise ConflictError(
                    f"task {task_id} is running and the task function ({s.task_function}) cannot be stopped; "
                    "wait for its result"
                )
            if self.tasks.request_cancel(task.task_id):
                observability.task_event("cancel requested", task.task_id, task.user_id, task.priority_level)
                return self.result(task_id)
            task = self.result(task_id)
        raise ConflictError(f"task {task_id} has already finished ({task.task_status}); there is nothing to cancel")
