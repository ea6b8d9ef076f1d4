"""Services: submit, report, dispatch and run. They combine the policy with the ports."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from chalicelib import policy
from chalicelib.domain import (
    CANCELLED,
    FAILURE,
    PENDING,
    STARTED,
    SUCCESS,
    ConflictError,
    Handoff,
    Identity,
    NotFoundError,
    QueuedMessage,
    Task,
    TooManyQueuedError,
    ValidationError,
)
from chalicelib.ports import (
    ALREADY_FINISHED,
    LEASE_LOST,
    MISSING,
    RUNNING_ELSEWHERE,
    STARTED_NOW,
    ControlStore,
    Idempotency,
    Invoker,
    KeyStore,
    QueuedLimitError,
    TaskQueues,
    TaskStore,
    UsageStore,
)
from chalicelib.settings import ConfigError, Settings
from chalicelib.tasks import TaskCancelledError, TaskContext, TaskFunction, load_task_function, supports_cancel
from chalicelib.validation import MAX_X_DEPTH, is_task_id, nesting

log = logging.getLogger("pqh")

# SQS keeps a queued message this long (MessageRetentionPeriod in infra/resources.json).
QUEUE_RETENTION_SECONDS = 14 * 24 * 3600
# A task whose worker died this many times while running it is marked FAILURE.
MAX_ATTEMPTS = 3
# A task's outcome write is tried again after these pauses when it fails even
# after botocore's retries: losing it means running an expensive task again.
OUTCOME_RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0)
# Tasks picked ahead go back to the queue once they have been held this many times
# PQH_PREFETCH_SECONDS: a slow task does not strand the ones held behind it.
OVERSTAY_FACTOR = 2.0
# Results larger than this are not stored (a DynamoDB item holds 400 KB).
MAX_RESULT_BYTES = 128 * 1024
# Times a submission at the queued limit recounts and tries again (others race it).
QUEUED_LIMIT_TRIES = 3
# A result nests at most one level deeper than the deepest accepted x (the default
# task's result holds x in input_x), so every recorded result reads back.
MAX_RESULT_DEPTH = MAX_X_DEPTH + 1
# /stats: how many users and recent tasks it lists, and how many usage items it reads at most.
STATS_TOP_USERS = 10
STATS_RECENT_TASKS = 20
STATS_MAX_USAGE_ITEMS = 5000
# A redrive call moves at most this many dead letters (call it again for more).
REDRIVE_MAX = 100
# The tick sends at most this many old messages again per level and run.
REQUEUE_BATCH = 25


@dataclass(frozen=True)
class Progress:
    queue_position: int  # queued tasks the policy will start first (approximate)
    eta_seconds: float  # expected wait before it starts


@dataclass
class DispatchReport:
    free_slots: int = 0
    workers_started: int = 0
    backlog: list[int] = field(default_factory=lambda: [0] * policy.LEVELS)


@dataclass
class WorkerReport:
    outcomes: list[str] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)
    stopped_because: str = ""


class Heartbeat:
    """Renews a slot's lease every third of the lease while a worker holds it.

    The slot counts as lost when a renewal is refused (someone else holds it) or
    when the last lease that was granted is about to run out (renewals failing).
    """

    def __init__(
        self, renew: Callable[[], float | None], interval: float, clock: Callable[[], float], valid_until: float
    ) -> None:
        self._renew = renew
        self._interval = interval
        self._clock = clock
        self._valid_until = valid_until
        self._margin = min(5.0, interval / 2)
        self._refused = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="slot-heartbeat", daemon=True)

    @property
    def lost(self) -> bool:
        return self._refused or self._clock() >= self._valid_until - self._margin

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                granted = self._renew()
            except Exception:
                log.exception("could not renew the slot lease; will retry")
                continue
            if granted is None:
                self._refused = True  # someone else holds the slot now: stop taking tasks
                log.warning("lost the slot lease; finishing the current task only")
                return
            self._valid_until = granted


class PendingDeletes:
    """Messages of finished tasks, deleted ten per request instead of one by one.

    A task's outcome is recorded before its message joins this list, so a worker
    that dies before the flush costs one wasted redelivery (found finished and
    dropped), never a second run. Flushed at ten per level, when the oldest has
    waited ``max_age`` seconds (well inside the queues' visibility timeout), and
    when the worker stops.
    """

    def __init__(self, queues: TaskQueues, clock: Callable[[], float], max_age: float = 30.0) -> None:
        self._queues = queues
        self._clock = clock
        self._max_age = max_age
        self._pending: dict[int, list[str]] = {}
        self._since: float | None = None

    def add(self, level: int, receipt_handle: str) -> None:
        handles = self._pending.setdefault(level, [])
        handles.append(receipt_handle)
        if self._since is None:
            self._since = self._clock()
        if len(handles) >= 10:
            self._flush_level(level)

    def flush_if_due(self) -> None:
        if self._since is not None and self._clock() - self._since >= self._max_age:
            self.flush()

    def flush(self) -> None:
        for level in list(self._pending):
            self._flush_level(level)  # the last one empties the list, and so resets _since

    def _flush_level(self, level: int) -> None:
        handles = self._pending.pop(level)
        if not self._pending:
            self._since = None
        if handles:
            try:
                self._queues.delete_many(level, handles)
            except Exception:  # redelivered later, found finished, dropped
                log.exception("level %d: %d finished messages not deleted", level, len(handles))


# A pick: its level, its message, the backlog state after it, and whether it took a count.
Picked = tuple[int, QueuedMessage, policy.Backlog, bool]


class Timer(Protocol):
    """A started one-shot timer: ``cancel`` stops it if it has not fired; ``join`` waits for a firing one."""

    def cancel(self) -> None: ...

    def join(self) -> None: ...


StartTimer = Callable[[float, Callable[[], None]], Timer]


def start_thread_timer(delay: float, fire: Callable[[], None]) -> Timer:
    """Call ``fire`` on a daemon thread after ``delay`` seconds."""
    timer = threading.Timer(delay, fire)
    timer.daemon = True
    timer.start()
    return timer


class Ahead:
    """A worker's tasks picked and not yet run, in the order to run them.

    While a task runs, a watchdog gives them all back (visible and counted, for
    any slot to take) once they have been held ``limit`` seconds; a batch that
    the prefetch thread picks while that task still runs goes straight back too.
    So no task picked ahead waits much longer than ``limit`` behind slow ones.
    """

    def __init__(
        self,
        put_back: Callable[[list[Picked]], None],
        limit: float,
        monotonic: Callable[[], float] = time.monotonic,
        start_timer: StartTimer | None = None,
    ) -> None:
        self._put_back = put_back
        self._limit = limit
        self._monotonic = monotonic
        self._start_timer = start_timer or start_thread_timer
        self._lock = threading.Lock()
        self._held: collections.deque[Picked] = collections.deque()
        self._since = 0.0  # when the oldest task held was picked (monotonic)
        self._overdue = False  # the running task outlived the limit: nothing more is held
        self._gave_back = False
        self._run = 0  # which run the watchdog watches; a late timer of an earlier one does nothing
        self._timer: Timer | None = None

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._held)

    def add(self, batch: list[Picked]) -> None:
        with self._lock:
            if not self._overdue:
                if batch and not self._held:
                    self._since = self._monotonic()
                self._held.extend(batch)
                return
            self._gave_back = self._gave_back or bool(batch)
        if batch:
            self._put_back(batch)

    def next(self) -> Picked | None:
        with self._lock:
            return self._held.popleft() if self._held else None

    def gave_back(self) -> bool:
        """Whether tasks went back during the last run (too long held); resets."""
        with self._lock:
            gave_back, self._gave_back = self._gave_back, False
            return gave_back

    def running(self, pending: bool) -> None:
        """A task starts: watch it if tasks are held, or a batch is being picked (``pending``)."""
        if self._limit <= 0:
            return
        with self._lock:
            if not (self._held or pending):
                return
            waited = self._monotonic() - self._since if self._held else 0.0
            run = self._run
        self._timer = self._start_timer(max(0.0, self._limit - waited), lambda: self._overstayed(run))

    def ran(self) -> None:
        """The task is done (or failed): stop watching, and wait for a watchdog already at work."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            timer.join()
        with self._lock:
            self._run += 1
            self._overdue = False

    def take_all(self) -> list[Picked]:
        with self._lock:
            left = list(self._held)
            self._held.clear()
            return left

    def _overstayed(self, run: int) -> None:
        with self._lock:
            if run != self._run:
                return  # that task is over
            self._overdue = True
            left = list(self._held)
            self._held.clear()
            self._gave_back = self._gave_back or bool(left)
        if left:
            self._put_back(left)


@dataclass
class Services:
    settings: Settings
    usage: UsageStore
    tasks: TaskStore
    queues: TaskQueues
    control: ControlStore
    invoker: Invoker
    clock: Callable[[], float] = time.time
    # The worker's watchdog and the cancel check measure and wait in these: tests drive them by hand.
    monotonic: Callable[[], float] = time.monotonic
    start_timer: StartTimer = start_thread_timer
    task_function: TaskFunction | None = None
    keys: KeyStore | None = None
    idempotency: Idempotency | None = None

    # --- submit -----------------------------------------------------------

    def submit(self, user_id: str, x: Any) -> Task:
        """Count the submission, pick its level, store it, queue it, nudge the dispatcher."""
        s = self.settings
        now = self.clock()
        count_before, weight = self._count_submission(user_id, now)
        level = policy.level_for(count_before, weight, s.thresholds)
        queue = policy.queue_level(level, s.policy)
        try:
            # Its level's count and its number in the level's queue (for its position),
            # in one write. Counted just before its message exists: a worker that takes
            # the count meanwhile finds the message with its long poll.
            count, seq = self.control.enqueue(queue)
        except Exception:
            # Not accepted: not counted either (best effort; the error goes to the client).
            with contextlib.suppress(Exception):
                self.usage.refund(user_id, now, now, s.bucket_seconds, s.window_seconds)
            raise
        queued_before = count - 1
        try:
            task = Task(
                task_id=str(uuid.uuid4()),
                user_id=user_id,
                x=x,
                priority_level=level,
                submitted_at=now,
                # Kept while its message may still be queued; finishing resets it to
                # finish + PQH_RESULT_TTL_SECONDS.
                expires_at=int(now) + QUEUE_RETENTION_SECONDS + s.result_ttl_seconds,
                tag=count_before / weight,
                queue_seq=seq,
            )
            self.tasks.create(task)
            try:
                self.queues.send(queue, task)
            except Exception:
                # Not queued means not accepted: no PENDING record may stay behind.
                self._drop_unqueued(task)
                raise
        except Exception:
            # Not accepted: neither counted nor queued (best effort; the error goes to
            # the client). A count left behind corrects itself at the next pick.
            with contextlib.suppress(Exception):
                self.control.withdraw(queue)
            with contextlib.suppress(Exception):
                self.usage.refund(user_id, now, now, s.bucket_seconds, s.window_seconds)
            raise
        log.info(
            "submitted task=%s user=%s level=%d count_before=%d weight=%d",
            task.task_id,
            user_id,
            level,
            count_before,
            weight,
        )
        if queued_before < s.capacity:
            self._nudge_dispatcher()
        # Else at least ``capacity`` tasks of this level were counted and not taken:
        # the nudge of the one that brought the count to ``capacity`` filled every
        # free slot (or found them held), and a worker that frees a slot nudges the
        # dispatcher again. One Lambda invoke and one dispatcher run saved per submit
        # under a deep backlog; below it every submit nudges, so no slot idles.
        return task

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

    def _drop_unqueued(self, task: Task) -> None:
        """Delete the record of a task whose message was never sent; failing that, cancel it.

        A PENDING record with no message would wait for the retention guard (a week).
        A cancelled one answers at once and leaves every index.
        """
        try:
            self.tasks.delete(task.task_id)
        except Exception:
            log.exception("task=%s was not queued and its record could not be deleted; cancelling it", task.task_id)
            now = self.clock()
            self.tasks.cancel_pending(task.task_id, now, now + self.settings.result_ttl_seconds)

    def submit_once(self, user_id: str, x: Any, key: str, lambda_context: Any = None) -> tuple[dict[str, Any], bool]:
        """submit() once per (user, Idempotency-Key): a retry gets the first answer back, counted once."""
        if self.idempotency is None:
            raise ConfigError("idempotent submits need an idempotency store")
        from chalicelib import views  # views only shape JSON

        return self.idempotency.run(user_id, key, x, lambda: views.submitted(self.submit(user_id, x)), lambda_context)

    def _nudge_dispatcher(self) -> None:
        try:
            self.invoker.trigger_dispatch()
        except Exception:  # the scheduled tick is the safety net
            log.exception("could not trigger the dispatcher; the next tick will dispatch")

    # --- report -----------------------------------------------------------

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
        state = self.control.backlog()
        found = policy.estimate(
            state,
            policy.queue_level(task.priority_level, s.policy),
            task.queue_seq,
            self.clock(),
            policy_name=s.policy,
            capacity=s.capacity,
            run_seconds=state.run_seconds or s.task_seconds,
            shares=s.shares,
            floor_picks=s.floor_picks,
        )
        return Progress(found.position, found.eta_seconds)

    def cancel(self, task_id: str, caller: Identity | None = None) -> Task:
        """Cancel a queued task, or ask a running one to stop; 409 when neither can be done.

        A queued task is cancelled with a conditional write (PENDING -> CANCELLED),
        so it races safely with a worker's start (PENDING -> STARTED): exactly one
        wins. It is taken out of the user's usage window and the level's count.
        """
        s = self.settings
        task = self.result(task_id, caller)
        now = self.clock()
        if task.task_status == PENDING:
            if self.tasks.cancel_pending(task.task_id, now, now + s.result_ttl_seconds):
                try:  # the cancel stands even if these fail: they are bookkeeping
                    self.usage.refund(task.user_id, task.submitted_at, now, s.bucket_seconds, s.window_seconds)
                    self.control.add_backlog(
                        policy.queue_level(task.priority_level, s.policy), -1, policy.tally(CANCELLED)
                    )
                except Exception:
                    log.exception("task=%s cancelled, but its usage or count was not taken back", task.task_id)
                log.info("cancelled task=%s user=%s level=%d", task.task_id, task.user_id, task.priority_level)
                return self.result(task_id)
            task = self.result(task_id)  # a worker started it meanwhile
        if task.task_status == STARTED:
            if not supports_cancel(self._task_function()):
                raise ConflictError(
                    f"task {task_id} is running and the task function ({s.task_function}) cannot be stopped; "
                    "wait for its result"
                )
            if self.tasks.request_cancel(task.task_id):
                log.info("cancel requested task=%s user=%s", task.task_id, task.user_id)
                return self.result(task_id)
            task = self.result(task_id)
        raise ConflictError(f"task {task_id} has already finished ({task.task_status}); there is nothing to cancel")

    def _task_function(self) -> TaskFunction:
        if self.task_function is None:
            self.task_function = load_task_function(self.settings.task_function)
        return self.task_function

    def _cancel_check(self, task_id: str, requested: bool) -> Callable[[], bool]:
        """ctx.cancelled for a running task: reads the flag at most once a second.

        ``requested`` is the flag as the start write returned it, so the first read
        comes a second into the run: a shorter task reads nothing.
        """
        last = {"at": self.monotonic(), "value": requested}

        def cancelled() -> bool:
            if not last["value"] and self.monotonic() - float(last["at"]) >= 1.0:
                task = self.tasks.get(task_id)
                last["at"], last["value"] = self.monotonic(), bool(task and task.cancel_requested)
            return bool(last["value"])

        return cancelled

    def set_weight(self, user_id: str, weight: int) -> None:
        s = self.settings
        self.usage.set_weight(user_id, weight, self.clock(), s.bucket_seconds, s.window_seconds)
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

    # --- API keys -------------------------------------------------------------

    def issue_key(self, user_id: str, admin: bool = False) -> dict[str, Any]:
        """A new API key for ``user_id``; only its SHA-256 is stored, so it is shown once."""
        key = "pqh_" + secrets.token_urlsafe(32)
        key_id = key_hash(key)
        self._keys().put_key(key_id, user_id, admin, self.clock())
        log.info("issued key=%s… user=%s admin=%s", key_id[:12], user_id, admin)
        return {"api_key": key, "key_id": key_id, "user_id": user_id, "admin": admin}

    def revoke_key(self, key_id: str) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", key_id) or not self._keys().delete_key(key_id):
            raise NotFoundError(f"no API key with id {key_id!r}")
        log.info("revoked key=%s…", key_id[:12])

    def authenticate(self, token: str | None) -> Identity | None:
        """Who a bearer token (the header's token, without 'Bearer ') is: the admin token, an issued key, or nobody."""
        token = (token or "").strip()
        if not token:
            return None
        admin_token = self.settings.admin_token
        if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
            return Identity("admin", admin=True)
        if not token.startswith("pqh_") or len(token) > 200:
            return None
        found = self._keys().get_key(key_hash(token))
        return Identity(found[0], admin=found[1]) if found else None

    def _keys(self) -> KeyStore:
        if self.keys is None:
            raise ConfigError("API keys need a key store")
        return self.keys

    # --- operators ----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What the dashboard shows: queues, capacity, totals, top users, recent tasks."""
        s = self.settings
        now = self.clock()
        slots, state = self.control.slots_and_backlog(s.capacity)
        slots_held = sum(1 for slot in slots if not slot.is_free(now))
        live_holders = {slot.holder for slot in slots if not slot.is_free(now)}
        depths = self.queues.depths()
        users, truncated = self.usage.top_users(
            now, s.bucket_seconds, s.window_seconds, STATS_TOP_USERS, STATS_MAX_USAGE_ITEMS
        )
        recent = self.tasks.recent(now, STATS_RECENT_TASKS)
        waits = sorted(t.wait_seconds for t in recent if t.wait_seconds is not None)
        # Totals: the backlog item's (counted by picks and cancels) plus the slots' (counted
        # by workers as they stop). Slots above a lowered capacity are not read.
        totals = state.tallies
        for slot in slots:
            totals = policy.add_tallies(totals, slot.tallies)
        succeeded, failed, cancelled = totals
        # The indexes are by priority level; under fifo every level's tasks share queue 0.
        oldest: list[float | None] = [None] * policy.LEVELS
        running_by_queue = [0] * policy.LEVELS
        for level in range(policy.LEVELS):
            since = self.tasks.oldest_queued(level)
            queue = policy.queue_level(level, s.policy)
            if since is not None and (oldest[queue] is None or since < oldest[queue]):  # type: ignore[operator]
                oldest[queue] = since
            # A task counts while its worker holds its slot: a dead worker's task stops
            # counting when its slot lease runs out, long before its run lease does.
            running_by_queue[queue] += sum(1 for h in self.tasks.running_holders(level, now) if h in live_holders)
        return {
            "generated_at": now,
            "policy": s.policy,
            "capacity": s.capacity,
            # Slots held by a live worker lease (a worker runs one task at a time on its slot).
            "slots_held": slots_held,
            "running": slots_held,  # the old name of slots_held
            "queues": [
                {
                    "level": d.level,
                    "queued": d.queued,
                    # Started, not finished, run lease live: what an operator calls running.
                    "running": running_by_queue[d.level],
                    # SQS's in-flight count: received and not yet deleted. It includes
                    # tasks picked ahead and finished tasks whose deletes are batched.
                    "received_not_deleted": d.in_flight,
                    "in_flight": d.in_flight,  # the old name of received_not_deleted
                    "counted": state.counts[d.level],
                    "dead_letters": d.dead,
                    "oldest_seconds": _age(oldest[d.level], now),
                }
                for d in depths
            ],
            "tasks": {
                "submitted": sum(state.enqueued) - sum(state.withdrawn),
                "queued": sum(state.counts),
                "running": sum(running_by_queue),
                "succeeded": succeeded,
                "failed": failed,
                "cancelled": cancelled,
                "dead_letters": sum(d.dead for d in depths),
            },
            "users": [
                {
                    "user_id": u.user_id,
                    "count_in_window": u.count_in_window,
                    "weight": u.weight,
                    "priority_level": policy.level_for(u.count_in_window, u.weight, s.thresholds),
                    "queued": self.tasks.queued_count(u.user_id),
                }
                for u in users
            ],
            "users_truncated": truncated,
            "recent": [
                {
                    "task_id": t.task_id,
                    "user_id": t.user_id,
                    "task_status": t.task_status,
                    "priority_level": t.priority_level,
                    "finished_at": t.finished_at,
                    "wait_seconds": _rounded(t.wait_seconds),
                    "run_seconds": _rounded(t.run_seconds),
                    "error": t.error,
                }
                for t in recent
            ],
            "wait_seconds": {
                "p50": _rounded(policy.percentile(waits, 0.5)),
                "p90": _rounded(policy.percentile(waits, 0.9)),
                "max": _rounded(waits[-1] if waits else None),
            },
            "run_seconds_average": _rounded(state.run_seconds or None),
        }

    def dead_letters(self, level: int, limit: int = 10) -> dict[str, Any]:
        """A look at a level's dead letters (they stay where they are) with their tasks' state."""
        _check_level(level)
        messages = self.queues.receive_dead(level, limit, hide_seconds=0)
        shown = []
        for m in messages:
            task = self.tasks.get(m.task_id)
            shown.append(
                {
                    "task_id": m.task_id,
                    "user_id": m.user_id,
                    "reason": m.reason or (task.error if task else "") or "too many receives",
                    "task_status": task.task_status if task else None,
                }
            )
        return {"level": level, "dead_letters": self.queues.depths()[level].dead, "messages": shown}

    def redrive(self, level: int, limit: int = REDRIVE_MAX) -> dict[str, int]:
        """Queue a level's failed tasks again (FAILURE -> PENDING, attempts reset).

        A dead letter whose task is gone or finished otherwise is dropped.
        """
        _check_level(level)
        redriven = dropped = 0
        while redriven + dropped < limit:
            batch = self.queues.receive_dead(level, min(10, limit - redriven - dropped), hide_seconds=60)
            if not batch:
                break
            for m in batch:
                if self._redrive_one(level, m.task_id):
                    redriven += 1
                else:
                    dropped += 1
                self.queues.delete_dead(level, m.receipt_handle)
        if redriven:
            log.info("redrove %d dead letters of level %d (dropped %d)", redriven, level, dropped)
            self._nudge_dispatcher()
        return {"redriven": redriven, "dropped": dropped}

    def _redrive_one(self, level: int, task_id: str) -> bool:
        s = self.settings
        task = self.tasks.get(task_id) if is_task_id(task_id) else None
        if task is None or task.task_status not in (FAILURE, PENDING):
            return False
        queue = policy.queue_level(task.priority_level, s.policy)
        _, seq = self.control.enqueue(queue)
        try:
            if task.task_status == FAILURE:
                expires_at = int(self.clock()) + QUEUE_RETENTION_SECONDS + s.result_ttl_seconds
                requeued = self.tasks.requeue(task_id, seq, expires_at, self.clock())
                if requeued is None:
                    self.control.withdraw(queue)
                    return False
                task = requeued
            # PENDING: SQS moved it after too many receives; it never ran. A send that
            # fails here keeps the dead letter: the next redrive sends the task again.
            self.queues.send(queue, task)
        except Exception:
            with contextlib.suppress(Exception):
                self.control.withdraw(queue)
            raise
        return True

    def purge_dead_letters(self, level: int) -> dict[str, int]:
        """Drop a level's dead letters; their tasks stay FAILURE."""
        _check_level(level)
        purged = self.queues.purge_dead(level)
        log.info("purged about %d dead letters of level %d", purged, level)
        return {"purged": purged}

    def refresh_stale(self) -> int:
        """Send again the message of every task queued longer than PQH_REQUEUE_AFTER_SECONDS.

        SQS deletes a message silently after its retention (14 days). The tick
        finds tasks queued for half that (a sparse index sorted by when they were
        queued) and sends each a fresh copy: the task stays PENDING, keeps its
        place and its count, and its record's expiry moves with it. Whichever copy
        is received first runs it; the other is a duplicate the start condition
        skips.
        """
        s = self.settings
        now = self.clock()
        sent = 0
        for level in range(policy.LEVELS):
            for task in self.tasks.queued_before(level, now - s.requeue_after_seconds, REQUEUE_BATCH):
                expires_at = int(now) + QUEUE_RETENTION_SECONDS + s.result_ttl_seconds
                # Send first: if the send fails, the task is still due and the next tick
                # tries again. If it started meanwhile, the copy is a duplicate the start
                # condition skips.
                self.queues.send(policy.queue_level(level, s.policy), task)
                if not self.tasks.mark_requeued(task.task_id, now, expires_at):
                    continue  # started or cancelled meanwhile
                sent += 1
                log.warning(
                    "task=%s user=%s queued since %.0fs ago: sent its message again (SQS keeps one 14 days)",
                    task.task_id,
                    task.user_id,
                    now - task.submitted_at,
                )
        return sent

    # --- dispatch ---------------------------------------------------------

    def dispatch(self, full_walk: bool = False) -> DispatchReport:
        """Hand free slots to new workers, one per queued task. Never more than capacity.

        Which task runs next is the worker's choice (``run``), so this needs no lock:
        a slot is claimed with a conditional write, so concurrent dispatchers can
        never hold more than ``capacity`` slots between them.
        """
        s = self.settings
        now = self.clock()
        report = DispatchReport()
        slots, state = self.control.slots_and_backlog(s.capacity)  # one BatchGetItem
        free = policy.free_slots(slots, s.capacity, now)
        report.free_slots = len(free)
        report.backlog = list(state.counts)
        if not free:
            return report
        wanted = policy.workers_wanted(len(free), report.backlog, full_walk)
        for slot_id in free:
            if report.workers_started >= wanted:
                break
            holder = uuid.uuid4().hex
            if not self.control.claim_slot(slot_id, holder, now, now + s.lease_seconds):
                continue  # another dispatcher took it
            try:
                self.invoker.start_worker(Handoff(slot_id, holder, full_walk, policy.backlog_to_payload(state)))
            except Exception:
                log.exception("could not start a worker on slot %d; the tasks stay queued", slot_id)
                self.control.release_slot(slot_id, holder)
                break
            report.workers_started += 1
        return report

    # --- run ----------------------------------------------------------------

    def run(self, handoff: Handoff) -> WorkerReport:
        """Hold the slot and run queued tasks, highest level first, until none are left.

        The worker stops taking tasks after PQH_RUNNER_SECONDS (a fresh worker
        carries on), or if its slot lease was lost. Then it frees the slot and
        nudges the dispatcher, so a task submitted meanwhile is not stranded.
        """
        s = self.settings
        report = WorkerReport()
        began = self.clock()
        # Take the slot over under a holder of this run's own: a duplicate or retried
        # invocation of the same hand-off, or one that comes after the lease ran out,
        # finds it is not the holder and runs nothing.
        holder = uuid.uuid4().hex
        valid_until = began + s.lease_seconds
        if not self.control.take_over_slot(handoff.slot_id, handoff.slot_holder, holder, began, valid_until):
            report.stopped_because = "slot not ours"
            log.warning("worker on slot %d started too late or twice; not running", handoff.slot_id)
            return report

        def renew() -> float | None:
            until = self.clock() + s.lease_seconds
            return until if self.control.renew_slot(handoff.slot_id, holder, until) else None

        # Finished tasks not yet counted in the backlog item's tallies: added by the
        # next pick's write, or by one write when the worker stops.
        unflushed = [0] * len(policy.TALLIES)
        missed = [False]
        deletes = PendingDeletes(self.queues, self.clock)
        # Picked and not yet run, in the order to run them: up to PQH_PREFETCH_SECONDS
        # of short tasks are picked with one write and received with one call.
        held = Ahead(self._put_back_now, OVERSTAY_FACTOR * s.prefetch_seconds, self.monotonic, self.start_timer)
        # The next batch, picked while the last held task runs (it adds them to ``held``).
        prefetched: Future[tuple[int, ...]] | None = None
        pool: ThreadPoolExecutor | None = None
        try:
            with Heartbeat(renew, max(0.5, s.lease_seconds / 3), self.clock, valid_until) as heartbeat:
                # The dispatcher's read of the backlog: saves this worker a read.
                snapshot = policy.backlog_from_payload(handoff.backlog) if handoff.backlog else None
                # Seconds per task on this slot (run plus the writes and the pick
                # between two tasks): what an ETA needs.
                cycle: float | None = None
                previous_pick: float | None = None
                while True:
                    if heartbeat.lost:
                        report.stopped_because = "slot lost"
                        break
                    if self.clock() - began >= s.runner_seconds:
                        report.stopped_because = "time up"
                        break
                    pick_at = self.clock()
                    if previous_pick is not None and cycle is None:
                        cycle = pick_at - previous_pick
                    looked = False
                    if prefetched is not None:  # started when nothing was held: its batch is next
                        carried = prefetched.result()
                        prefetched = None
                        unflushed[:] = policy.add_tallies(unflushed, carried)  # the ones it did not write
                        # Its walk found the queues empty, or it picked: either way no
                        # second look (a task counted after that walk is seen by the
                        # check after the slot is freed, as with an inline pick), unless
                        # its batch went straight back because a slow task was running.
                        looked = not held.gave_back()
                    if not held and not looked:
                        most = self._batch_size(snapshot, began)
                        held.add(self._pick_next(snapshot, handoff.full_walk, cycle, unflushed, missed, most))
                    picked = held.next()
                    if picked is None:
                        report.stopped_because = "queues empty"
                        break
                    level, message, snapshot, counted = picked
                    log.info(
                        "dispatched task=%s user=%s level=%d slot=%d wait=%.3fs",
                        message.task_id,
                        message.user_id,
                        level,
                        handoff.slot_id,
                        self.clock() - message.submitted_at if message.submitted_at else 0.0,
                    )
                    report.levels.append(level)
                    if not held and self._prefetch_wanted(snapshot, began, heartbeat.lost):
                        carry = list(unflushed)  # the prefetching pick writes these, or hands them back
                        unflushed[:] = [0] * len(unflushed)
                        pool = pool or ThreadPoolExecutor(1, thread_name_prefix="prefetch")
                        most = self._batch_size(snapshot, began)
                        prefetched = pool.submit(
                            self._prefetch, held, snapshot, handoff.full_walk, cycle, carry, missed, most
                        )
                    # The outcome is written before the next task starts, never alongside
                    # it: a worker that dies starting the next task has recorded this one.
                    held.running(pending=prefetched is not None)
                    try:
                        outcome = self._run_one(level, message, counted, deletes, holder)
                    finally:
                        held.ran()
                    deletes.flush_if_due()
                    report.outcomes.append(outcome)
                    if outcome in policy.TALLIES:
                        unflushed[:] = policy.add_tallies(unflushed, policy.tally(outcome))
                    # Only a task that ran gives a cycle time; the next pick records it.
                    previous_pick, cycle = (pick_at, None) if outcome in (SUCCESS, FAILURE) else (None, None)
        finally:
            if prefetched is not None:
                try:
                    unflushed[:] = policy.add_tallies(unflushed, prefetched.result())
                except Exception:  # they come back after the visibility timeout; the tick counts them
                    log.exception("could not pick ahead")
            left = held.take_all()  # stopped with tasks picked and not run: they go back
            if left:
                try:
                    self._put_back(left)
                except Exception:  # they come back after the visibility timeout; the tick counts them
                    log.exception("could not put %d picked tasks back", len(left))
            if pool is not None:
                pool.shutdown(wait=True)
            deletes.flush()
            # What the picks did not count rides on the release (the slot item's totals),
            # or, when the slot is no longer ours, on the backlog item.
            tallies = tuple(unflushed)
            if not self.control.release_slot(handoff.slot_id, holder, tallies) and any(tallies):
                try:
                    self.control.add_backlog(0, 0, tallies)
                except Exception:  # totals are approximate by design; the tasks are recorded
                    log.exception("slot %d: %s finished tasks not counted in the totals", handoff.slot_id, tallies)
            if report.stopped_because != "queues empty" or self._anything_counted():
                self._nudge_dispatcher()
            # Else the queues were empty when this worker looked, and still are now that
            # its slot is free: a task submitted in between is counted, so it shows here.
            # One GetItem instead of a Lambda invoke and a dispatcher run per idle stop.
        return report

    def _prefetch_wanted(self, snapshot: policy.Backlog | None, began: float, lost: bool) -> bool:
        """Pick the next tasks during this one: only for short tasks, and with time left to run them."""
        s = self.settings
        if s.prefetch_seconds <= 0 or snapshot is None or lost:
            return False
        average = snapshot.run_seconds
        return 0 < average <= s.prefetch_seconds and self.clock() - began + average < s.runner_seconds

    def _batch_size(self, snapshot: policy.Backlog | None, began: float) -> int:
        """About PQH_PREFETCH_SECONDS of tasks at the recent average, within the worker's time left."""
        s = self.settings
        average = snapshot.run_seconds if snapshot is not None else 0.0
        return policy.batch_size(average, s.prefetch_seconds, s.runner_seconds - (self.clock() - began))

    def _prefetch(
        self,
        held: Ahead,
        snapshot: policy.Backlog,
        full_walk: bool,
        cycle: float | None,
        carry: list[int],
        missed: list[bool],
        most: int,
    ) -> tuple[int, ...]:
        """_pick_next on the prefetch thread, into ``held``; returns the tallies it did not write."""
        held.add(self._pick_next(snapshot, full_walk, cycle, carry, missed, most))
        return tuple(carry)

    def _put_back_now(self, picks: list[Picked]) -> None:
        """Tasks held behind a slow one: back to the queue, and a dispatcher run for any free slot."""
        try:
            self._put_back(picks)
        except Exception:  # they come back after the visibility timeout; the tick counts them
            log.exception("could not put %d tasks held behind a slow one back", len(picks))
            return
        self._nudge_dispatcher()

    def _put_back(self, picks: list[Picked]) -> None:
        """Picked tasks that will not run here: their messages visible again, their counts back.

        Every level is tried even if one fails (the first error is raised after):
        a message not given back returns after its visibility timeout, uncounted,
        and the tick's walk finds it.
        """
        by_level: dict[int, list[Picked]] = {}
        for pick in picks:
            by_level.setdefault(pick[0], []).append(pick)
        errors: list[Exception] = []
        for level, group in by_level.items():
            try:
                self.queues.give_back(level, [message.receipt_handle for _, message, _, _ in group])
            except Exception as exc:
                errors.append(exc)
                continue
            counted = sum(1 for *_, was_counted in group if was_counted)
            try:
                if counted:
                    self.control.add_backlog(level, counted)
            except Exception as exc:
                errors.append(exc)
            log.info("put back %d tasks of level %d (picked ahead, not run)", len(group), level)
        if errors:
            raise errors[0]

    def _anything_counted(self) -> bool:
        try:
            return any(count > 0 for count in self.control.backlog().counts)
        except Exception:  # cannot tell: nudge
            log.exception("could not read the backlog; nudging the dispatcher")
            return True

    def _pick_next(
        self,
        snapshot: policy.Backlog | None,
        full_walk: bool,
        last_run: float | None = None,
        unflushed: list[int] | None = None,
        missed: list[bool] | None = None,
        most: int = 1,
    ) -> list[Picked]:
        """Choose up to ``most`` tasks by the policy, take them off the counts in one write, then receive them.

        In the order the policy runs them; empty when nothing is left. Each pick's
        last value says whether its message was taken against a count (False for
        the tick's walk over uncounted messages). ``unflushed`` tallies ride on the
        pick's write and are zeroed once written. ``missed`` remembers a pick that
        found fewer messages than it counted: before stopping, this worker then
        walks every level itself.
        """
        s = self.settings
        state = snapshot if snapshot is not None else self.control.backlog()
        if snapshot is not None and policy.choose_level(state, s.policy, s.floor_picks) is None:
            state = self.control.backlog()  # the snapshot predates the last task: look again
        # Weights order the users inside a level under every policy but the two plain ones.
        sample = s.fair_sample if s.policy in ("fair", "priority") else 1
        while True:
            share = policy.batch_share(state.counts, s.capacity)
            levels, after = policy.plan_picks(state, min(most, share), s.policy, s.shares, s.floor_picks)
            if not levels:
                break
            # The pick's write also carries the levels' recent arrival rates (for ETAs).
            after = policy.with_arrival_rates(after, self.clock())
            if last_run is not None:  # this slot's last seconds per task, for ETAs
                after = replace(after, run_seconds=policy.moving_average(state.run_seconds, last_run))
            takes = {level: levels.count(level) for level in levels}
            taken, state = self.control.commit_pick(state, after, takes, tuple(unflushed or ()))
            if not taken:
                continue  # the state moved (a submit, or another worker's pick): choose again
            if unflushed:
                unflushed[:] = [0] * len(unflushed)
            received: dict[int, list[QueuedMessage]] = {}
            try:
                for level, n in takes.items():
                    received[level] = self._receive_for(level, n, sample, missed)
            except Exception:
                # None of this pick will run here: what it received goes back, and
                # every count it took (a message received and lost in the failing
                # call comes back after its visibility timeout, counted again).
                self._undo_pick(takes, received)
                raise
            # In the policy's order: a level's n-th turn runs its n-th chosen message.
            picks = [(level, received[level].pop(0), state, True) for level in levels if received[level]]
            if picks:
                return picks
        walk = full_walk or bool(missed and missed[0])
        if missed is not None:
            missed[:] = [False]
        if walk:
            # The tick also looks at levels counted empty, for messages the counts
            # missed (a fault between send and count, or a message SQS redelivered);
            # so does a worker whose pick found nothing, rather than leave it to the tick.
            for level in range(policy.LEVELS):
                messages = self.queues.receive(level, 1, wait_seconds=0)
                if messages:
                    if missed is not None:
                        missed[:] = [True]  # there may be more: walk again before stopping
                    return [(level, messages[0], state, False)]
        return []

    def _receive_for(self, level: int, n: int, sample: int, missed: list[bool] | None) -> list[QueuedMessage]:
        """The ``n`` messages of a level a pick counted: the best ``n`` of up to ``n + sample - 1`` received.

        One receive, so at most ten: a single task is the best of PQH_FAIR_SAMPLE,
        five tasks the best five of ten, ten tasks whatever ten SQS returns (run
        smallest tag first). A second receive for a wider sample cost 0.2 requests
        per task under the bench's backlog, for an order inside one level that a
        sample of a deep level only approximates anyway.
        """
        want = min(policy.MAX_BATCH, n + sample - 1)
        messages = list(self.queues.receive(level, want, wait_seconds=0))
        if len(messages) < n:
            # A short poll samples some SQS servers, so it may return fewer messages
            # than are there (none, or a few of a small queue); a long poll asks them
            # all. Still short: the count was ahead of the queue, and this pick has
            # corrected it. Or the messages were in another worker's sample, about to
            # be given back: then they are queued but no longer counted, and the walk
            # before this worker stops finds them.
            messages += self.queues.receive(level, want - len(messages), wait_seconds=1)
        if len(messages) < n and missed is not None:
            missed[:] = [True]
        return self._some_of(level, messages, n)

    def _undo_pick(self, takes: dict[int, int], received: dict[int, list[QueuedMessage]]) -> None:
        """A pick whose receives failed part-way: its messages visible again, its counts back (best effort)."""
        for level, n in takes.items():
            with contextlib.suppress(Exception):
                if received.get(level):
                    self.queues.give_back(level, [m.receipt_handle for m in received[level]])
            with contextlib.suppress(Exception):
                self.control.add_backlog(level, n)

    def _some_of(self, level: int, messages: list[QueuedMessage], n: int) -> list[QueuedMessage]:
        """Fairness inside a level: of the sampled messages, the ``n`` whose users had used least, in order."""
        if len(messages) <= 1:
            return messages
        chosen = policy.pick_within_level_many([(m.tag, m.submitted_at) for m in messages], n)
        kept = set(chosen)
        rest = [m.receipt_handle for i, m in enumerate(messages) if i not in kept]
        if rest:
            self.queues.give_back(level, rest)
        return [messages[i] for i in chosen]

    def _run_one(
        self, level: int, message: QueuedMessage, counted: bool, deletes: PendingDeletes, slot_holder: str = ""
    ) -> str:
        """Run one task at most once and record its outcome."""

        def delete() -> None:
            deletes.add(level, message.receipt_handle)

        run_id = uuid.uuid4().hex
        now = self.clock()
        outcome, task = self.tasks.start(
            message.task_id, run_id, now, now + self.settings.run_lease_seconds, slot_holder
        )
        if counted and (outcome != STARTED_NOW or (task is not None and task.attempts > 1)):
            # This message was a duplicate or a redelivery, and was not counted; the
            # count the pick took belongs to another message of the level: give it back.
            self.control.add_backlog(level, 1)
        if outcome == ALREADY_FINISHED and task is not None and task.task_status == FAILURE:
            # A failed task whose worker died before its message reached the dead
            # letters: it goes there now (at least once: rarely, twice).
            self._to_dead_letters(level, message, task.error or "failed")
            log.info("dead-lettered task=%s on its redelivery", message.task_id)
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
            self._to_dead_letters(level, message, reason)
            log.warning("failed task=%s user=%s: %s", task.task_id, task.user_id, reason)
            return FAILURE
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
            log.info(
                "finished task=%s user=%s status=%s wait=%.3fs run=%.3fs",
                task.task_id,
                task.user_id,
                status,
                now - task.submitted_at,
                finished_at - now,
            )
        else:
            # Another run owns the task now. Its message stays: SQS delivers it again,
            # and that delivery finds the task finished (and drops it) or runs it, so
            # the task is never left STARTED with nobody to finish it.
            log.warning("task=%s lost its run lease before finishing; result not recorded", task.task_id)
            return LEASE_LOST  # not counted in the totals: the run that owns it counts it
        # After the outcome is recorded: a crash between the two leaves a redelivery, not a loss.
        if status == FAILURE:
            self._to_dead_letters(level, message, error or "failed")
        else:
            delete()
        return status

    @staticmethod
    def _patiently(write: Callable[[], bool]) -> bool:
        """A write that must not be lost, tried again after OUTCOME_RETRY_DELAYS; the last failure raises.

        Safe to repeat: a first try that landed unseen makes the next fail its
        condition (False: the outcome is there, the message is left for SQS).
        """
        for delay in OUTCOME_RETRY_DELAYS:
            try:
                return write()
            except Exception:
                log.warning("outcome write failed; trying again in %.1fs", delay, exc_info=True)
                time.sleep(delay)
        return write()

    def _to_dead_letters(self, level: int, message: QueuedMessage, reason: str) -> None:
        """A failed task's message goes to the level's dead-letter queue, for operators to look at or redrive."""
        try:
            self.queues.send_dead(level, message, reason)
        except Exception:  # the task is FAILURE with its reason either way
            log.exception("could not dead-letter task=%s; it stays FAILURE", message.task_id)
        self.queues.delete(level, message.receipt_handle)

    def _execute(self, task: Task) -> tuple[str, Any, str | None]:
        function = self._task_function()
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


def key_hash(key: str) -> str:
    """Keys are 256-bit random strings, so a plain SHA-256 is enough to store them."""
    return hashlib.sha256(key.encode()).hexdigest()


def _age(since: float | None, now: float) -> float | None:
    return None if since is None else round(max(0.0, now - since), 1)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _check_level(level: int) -> None:
    if not 0 <= level < policy.LEVELS:
        raise ValidationError(f"level must be 0..{policy.LEVELS - 1}, got {level}")
