"""Operations: stats, dead letters (look, redrive, purge) and the retention refresh."""

from __future__ import annotations

import contextlib
import logging
import threading

from chalicelib import policy, top_users
from chalicelib.deps import QUEUE_RETENTION_SECONDS, Deps, Service
from chalicelib.domain import (
    FAILURE,
    PENDING,
    DeadLetter,
    DeadLetters,
    QueueStats,
    Stats,
    TaskTotals,
    UserStats,
    ValidationError,
)
from chalicelib.validation import is_task_id

log = logging.getLogger("pqh")

# /stats: how many recent tasks it lists (the top users: chalicelib/top_users.py).
STATS_RECENT_TASKS = 20
# A redrive call moves at most this many dead letters (call it again for more).
REDRIVE_MAX = 100
# The retention refresh sends at most this many old messages again per queue and tick.
REFRESH_BATCH = 25


class Operations(Service):
    def __init__(self, deps: Deps) -> None:
        super().__init__(deps)
        self._stats: Stats | None = None  # the last answer of this process (PQH_STATS_CACHE_SECONDS)
        self._stats_lock = threading.Lock()

    def stats(self) -> Stats:
        """What the dashboard shows; computed again once the last answer is PQH_STATS_CACHE_SECONDS old.

        Per process: one open dashboard polling every 2 s costs one computation per
        cache period on a warm function, whatever the number of tabs it serves.
        """
        now = self.clock()
        with self._stats_lock:
            cached = self._stats
            if cached is not None and 0 <= now - cached.generated_at < self.settings.stats_cache_seconds:
                return cached
            self._stats = self._compute_stats(now)
            return self._stats

    def _compute_stats(self, now: float) -> Stats:
        """A fixed number of requests whatever the number of users or tasks (docs/operating-aws.md)."""
        s = self.settings
        slots, shards = self.control.slots_and_backlogs(s.capacity, s.backlog_shards)
        backlog = policy.combined(shards)
        slots_held = sum(1 for slot in slots if not slot.is_free(now))
        live_holders = {slot.holder for slot in slots if not slot.is_free(now)}
        depths = self.queues.depths()
        users = self.usage.top_users(now, s.bucket_seconds, s.window_seconds, top_users.LISTED)
        recent = self.tasks.recent(now, STATS_RECENT_TASKS)
        waits = sorted(t.wait_seconds for t in recent if t.wait_seconds is not None)
        # Totals: the backlog record's (counted by picks and cancels) plus the slots' (counted
        # by workers as they stop). Slots above a lowered capacity are not read.
        totals = backlog.tallies
        for slot in slots:
            totals = policy.add_tallies(totals, slot.tallies)
        succeeded, failed, cancelled = totals
        # The indexes are by priority level; under fifo every level's tasks share queue 0.
        oldest: list[float | None] = [None] * policy.LEVELS
        running_by_queue = [0] * policy.LEVELS
        for level, holders in self.tasks.running_holders(now).items():
            # A task counts while its worker holds its slot: a dead worker's task stops
            # counting when its slot lease runs out, long before its run lease does.
            running_by_queue[policy.queue_level(level, s.policy)] += sum(1 for h in holders if h in live_holders)
        for level in range(policy.LEVELS):
            queue = policy.queue_level(level, s.policy)
            # One Query per level, and only for a queue that holds messages or a count:
            # an empty queue has no queued task (SQS shows its in-flight ones too).
            depth = depths[queue]
            if depth.queued + depth.in_flight == 0 and backlog.counts[queue] == 0:
                continue
            since = self.tasks.oldest_queued(level)
            if since is not None and (oldest[queue] is None or since < oldest[queue]):  # type: ignore[operator]
                oldest[queue] = since
        anything_queued = any(d.queued + d.in_flight for d in depths) or any(backlog.counts)
        return Stats(
            generated_at=now,
            policy=s.policy,
            capacity=s.capacity,
            slots_held=slots_held,
            queues=[
                QueueStats(
                    level=d.level,
                    queued=d.queued,
                    running=running_by_queue[d.level],
                    received_not_deleted=d.in_flight,
                    counted=backlog.counts[d.level],
                    dead_letters=d.dead,
                    oldest_seconds=None if oldest[d.level] is None else max(0.0, now - oldest[d.level]),  # type: ignore[operator]
                )
                for d in depths
            ],
            tasks=TaskTotals(
                submitted=sum(backlog.enqueued) - sum(backlog.withdrawn),
                queued=sum(backlog.counts),
                running=sum(running_by_queue),
                succeeded=succeeded,
                failed=failed,
                cancelled=cancelled,
                dead_letters=sum(d.dead for d in depths),
            ),
            users=[
                UserStats(
                    user_id=u.user_id,
                    count_in_window=u.count_in_window,
                    weight=u.weight,
                    priority_level=policy.level_for(u.count_in_window, u.weight, s.thresholds),
                    # One COUNT Query per listed user (at most top_users.LISTED), none when nothing is queued.
                    queued=self.tasks.queued_count(u.user_id) if anything_queued else 0,
                )
                for u in users
            ],
            users_truncated=False,  # no scan any more: the list is the noted candidates (chalicelib/top_users.py)
            recent=list(recent),
            wait_p50=policy.percentile(waits, 0.5),
            wait_p90=policy.percentile(waits, 0.9),
            wait_max=waits[-1] if waits else None,
            run_seconds_average=backlog.run_seconds or None,
        )

    def dead_letters(self, level: int, limit: int = 10) -> DeadLetters:
        """A look at a queue's dead letters (they stay where they are) with their tasks' state."""
        _check_level(level)
        messages = self.queues.receive_dead(level, limit, hide_seconds=0)
        shown = []
        for m in messages:
            task = self.tasks.get(m.task_id)
            shown.append(
                DeadLetter(
                    task_id=m.task_id,
                    user_id=m.user_id,
                    reason=m.reason or (task.error if task else "") or "too many receives",
                    task_status=task.task_status if task else None,
                )
            )
        return DeadLetters(level=level, dead_letters=self.queues.depths()[level].dead, messages=shown)

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
        control = self.task_shard(task_id)
        # Queued again, not submitted again: its new number counts as withdrawn too, so the
        # submitted total counts the task once; a redrive undone takes back the count alone.
        _, seq = control.enqueue(queue, again=True)
        try:
            if task.task_status == FAILURE:
                expires_at = int(self.clock()) + QUEUE_RETENTION_SECONDS + s.result_ttl_seconds
                reset = self.tasks.requeue(task_id, seq, expires_at, self.clock())  # FAILURE -> PENDING
                if reset is None:
                    control.add_backlog(queue, -1)
                    return False
                task = reset
            # PENDING: SQS moved it after too many receives; it never ran. A send that
            # fails here keeps the dead letter: the next redrive sends the task again.
            self.queues.send(queue, task)
        except Exception:
            with contextlib.suppress(Exception):
                control.add_backlog(queue, -1)
            raise
        return True

    def purge_dead_letters(self, level: int) -> dict[str, int]:
        """Drop a level's dead letters; their tasks stay FAILURE."""
        _check_level(level)
        purged = self.queues.purge_dead(level)
        log.info("purged about %d dead letters of level %d", purged, level)
        return {"purged": purged}

    def refresh_stale(self) -> int:
        """The retention refresh: send again the message of every task queued longer than PQH_REQUEUE_AFTER_SECONDS.

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
            for task in self.tasks.queued_before(level, now - s.requeue_after_seconds, REFRESH_BATCH):
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


def _check_level(level: int) -> None:
    if not 0 <= level < policy.LEVELS:
        raise ValidationError(f"level must be 0..{policy.LEVELS - 1}, got {level}")
