"""Submitting: count the submission, choose its level, store it, queue it, nudge the dispatcher."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from chalicelib import observability, policy, top_users
from chalicelib.deps import QUEUE_RETENTION_SECONDS, SUBMIT_DEADLINE_SECONDS, Deps, Service
from chalicelib.domain import Submitted, Task, TooManyQueuedError, UnavailableError
from chalicelib.ports import QueuedLimitError
from chalicelib.settings import ConfigError

log = logging.getLogger("pqh")

# Times a submission at the queued limit recounts and tries again (others race it).
QUEUED_LIMIT_TRIES = 3


class Submitting(Service):
    def __init__(self, deps: Deps) -> None:
        super().__init__(deps)
        self._top_floor: tuple[int, float] = (0, float("-inf"))  # the top-users floor and when it was seen

    def submit(self, user_id: str, x: Any) -> Task:
        """Count the submission, pick its level, queue it, count it in its queue and store it; nudge the dispatcher.

        Two steps one after another, the second two calls deep on one side: the
        user's count (the level comes from it); then the message, sent while the
        queue's count and number are written and, after them, the record (it holds
        the number). A worker that receives the message before its record lands
        gives it back for a moment (``Executor.run_one``); one that takes the count
        before the message is there finds it with its long poll. A note on the
        top-users list goes out beside the queue's count, the nudge beside the record.
        """
        s = self.settings
        now = self.clock()
        count_before, weight = self._count_submission(user_id, now)
        note = self._beside(lambda: self._note_top_user(user_id, count_before + 1, now))
        level = policy.level_for(count_before, weight, s.thresholds)
        queue = policy.queue_level(level, s.policy)
        task_id = str(uuid.uuid4())
        control = self.task_shard(task_id)  # the backlog record it is counted in (policy/shards.py)
        task = Task(
            task_id=task_id,
            user_id=user_id,
            x=x,
            priority_level=level,
            submitted_at=now,
            # Kept while its message may still be queued; finishing resets it to
            # finish + PQH_RESULT_TTL_SECONDS.
            expires_at=int(now) + QUEUE_RETENTION_SECONDS + s.result_ttl_seconds,
            tag=count_before / weight,
        )
        # The message needs none of what the queue's count returns: it goes out at once
        # (SQS is the slower service), the count, then the record, meanwhile.
        sent = self._beside(functools.partial(self.queues.send, queue, task))
        try:
            # Its queue's count and its number in that queue (for its position), in one write.
            count, seq = control.enqueue(queue)
        except Exception:
            # Not accepted: not counted either (best effort; the error goes to the client).
            # A message that went out has no record: the worker that finds it hides it,
            # then drops it (Executor.run_one).
            _log_unraised(_failure(sent), task_id, "send")
            with contextlib.suppress(Exception):
                self.usage.refund(user_id, now, now, s.bucket_seconds, s.window_seconds)
            raise
        finally:
            _wait(note)
        task = dataclasses.replace(task, queue_seq=seq)
        failed: BaseException | None = sent.exception() if sent.done() else None
        if failed is None and self.clock() - now > SUBMIT_DEADLINE_SECONDS:
            # Too late to write the record: a worker may have dropped the message as a
            # failed submit's (RECORD_GRACE_SECONDS), and the task would never run.
            failed = UnavailableError(f"the submit took over {SUBMIT_DEADLINE_SECONDS:.0f} s; retry shortly")
        nudge = None
        stored = False  # whether its record may exist
        if failed is None:
            # The task is counted: a worker the nudge starts takes the count and finds
            # the message with its long poll. So the nudge (a Lambda Invoke, the slowest
            # call of a submit) goes out while the record is written. (Per shard: its
            # share of the slots.)
            if count - 1 < -(-s.capacity // s.backlog_shards):
                nudge = self._beside(self._nudge_dispatcher)
            stored = True
            try:
                self.tasks.create(task)
            except Exception as exc:
                failed = exc
            send_failed = _failure(sent)
            if failed is None:
                failed = send_failed
            else:
                _log_unraised(send_failed, task_id, "send")
        _wait(nudge)  # never raises (a failed nudge is logged); the answer waits for it
        if failed is not None:
            # Not accepted: neither stored, counted nor queued (best effort; the error
            # goes to the client). A message sent without its record is dropped by the
            # worker that finds it (Executor.run_one); a count left behind corrects
            # itself at the next pick.
            if stored:
                with contextlib.suppress(Exception):
                    self._drop_unqueued(task)
            with contextlib.suppress(Exception):
                control.withdraw(queue)
            with contextlib.suppress(Exception):
                self.usage.refund(user_id, now, now, s.bucket_seconds, s.window_seconds)
            raise failed
        observability.task_event(
            "submitted", task.task_id, user_id, level, queue=queue, count_before=count_before, weight=weight
        )
        observability.metrics.count(observability.TASKS_SUBMITTED, level)
        # Only below ``capacity`` tasks of this queue counted and not taken is the
        # dispatcher nudged. At or above it, the nudge of the one that brought the count
        # to ``capacity`` filled every free slot (or found them held), and a worker that
        # frees a slot nudges the dispatcher again. One Lambda invoke and one dispatcher
        # run saved per submit under a deep backlog; below it every submit nudges, so no
        # slot idles.
        return task

    def submit_once(self, user_id: str, x: Any, key: str, lambda_context: Any = None) -> tuple[Submitted, bool]:
        """submit() once per (user, Idempotency-Key): a retry gets the first answer back, counted once."""
        idempotency = self.deps.idempotency
        if idempotency is None:
            raise ConfigError("idempotent submits need an idempotency store")
        answer, replayed = idempotency.run(
            user_id, key, x, lambda: Submitted.of(self.submit(user_id, x)).to_record(), lambda_context
        )
        return Submitted.from_record(answer), replayed

    def _count_submission(self, user_id: str, now: float) -> tuple[int, int]:
        """record_submission under the user's queued limit; 429 when they really have that many queued.

        The counter only goes up (a started task does not lower it: no write per task).
        When it reaches the limit, the queued-by-user index says how many are really
        queued (one Query), and the counter is brought down to that. So a user below
        the limit pays nothing more, and one at it a Query per refused submission.
        """
        s = self.settings
        limit = s.max_queued_per_user
        for _ in range(QUEUED_LIMIT_TRIES):
            try:
                return self.usage.record_submission(user_id, now, s.bucket_seconds, s.window_seconds, limit)
            except QueuedLimitError as full:
                queued = self.tasks.queued_count(user_id)
                if queued >= limit:
                    raise TooManyQueuedError(
                        f"user {user_id!r} has {queued} tasks queued; the limit is {limit} "
                        "(PQH_MAX_QUEUED_PER_USER): wait until some have started, or cancel some",
                        retry_after=min(300, max(1, math.ceil(s.task_seconds))),
                    ) from full
                self.usage.set_queued(user_id, full.counted, queued)
        raise TooManyQueuedError(f"user {user_id!r} is submitting many tasks at once; retry shortly", retry_after=1)

    def _note_top_user(self, user_id: str, count: int, now: float) -> None:
        """Note the user on the top-users list at a milestone count above its floor (chalicelib/top_users.py).

        The floor this process last saw is kept for one bucket, so most submissions
        write nothing more; a note that fails only costs the list a candidate.
        """
        s = self.settings
        floor, seen_at = self._top_floor
        if now - seen_at >= s.bucket_seconds:
            floor = 0
        if not top_users.worth_noting(count, floor):
            return
        try:
            self._top_floor = (self.usage.note_top_user(user_id, count, now, s.window_seconds), now)
        except Exception:
            log.exception("could not note user=%s on the top-users list", user_id)

    def _beside(self, call: Callable[[], None]) -> Future[None]:
        """Start ``call`` on the process's side pool (in line if no thread can be had); ``_wait`` for it."""
        try:
            return self.deps.side_pool().submit(call)
        except RuntimeError:  # the pool is shut down (the interpreter is exiting)
            done: Future[None] = Future()
            try:
                call()
                done.set_result(None)
            except Exception as exc:
                done.set_exception(exc)
            return done

    def _drop_unqueued(self, task: Task) -> None:
        """Delete the record of a task that was not accepted; failing that, cancel it.

        A PENDING record with no message would wait for the retention refresh (a week).
        A cancelled one answers at once and leaves every index, and a worker that
        receives its message (if one was sent) finds it finished and deletes it.
        """
        try:
            self.tasks.delete(task.task_id)
        except Exception:
            log.exception("task=%s was not queued and its record could not be deleted; cancelling it", task.task_id)
            now = self.clock()
            self.tasks.cancel_pending(task.task_id, now, now + self.settings.result_ttl_seconds)


def _failure(future: Future[None]) -> BaseException | None:
    """Wait for a call started beside the request; its error, if it failed."""
    try:
        future.result()
    except Exception as exc:
        return exc
    return None


def _log_unraised(error: BaseException | None, task_id: str, call: str) -> None:
    """An error that is not the one the client gets: logged, not lost."""
    if error is not None:
        log.warning("task=%s: its %s failed too: %r", task_id, call, error)


def _wait(future: Future[None] | None) -> None:
    """Wait for a call started beside the request, whatever its outcome (it logs its own errors)."""
    if future is not None:
        with contextlib.suppress(Exception):
            future.result()
