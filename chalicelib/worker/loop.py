"""The worker loop: hold a slot and run queued tasks, most urgent level first, until none are left."""

from __future__ import annotations

import logging
import uuid
from concurrent import futures
from dataclasses import dataclass, field

from chalicelib import observability, policy
from chalicelib.deps import Deps, Service
from chalicelib.domain import FAILURE, SUCCESS, Handoff
from chalicelib.worker.deletes import PendingDeletes
from chalicelib.worker.executing import Executor
from chalicelib.worker.heartbeat import Heartbeat
from chalicelib.worker.held import Held
from chalicelib.worker.picking import NO_TALLIES, Picked, Picker, Tallies

log = logging.getLogger("pqh")

# Held tasks go back to the queue once they have been held this many times
# PQH_PREFETCH_SECONDS: a slow task does not strand the ones held behind it.
OVERSTAY_FACTOR = 2.0


@dataclass
class WorkerReport:
    outcomes: list[str] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)
    stopped_because: str = ""


@dataclass
class WorkerState:
    """Everything one worker run keeps between two tasks."""

    handoff: Handoff
    holder: str  # this run's own holder of the slot
    began: float
    heartbeat: Heartbeat
    picker: Picker
    held: Held  # picked and not yet run, in the order to run them
    deletes: PendingDeletes
    report: WorkerReport = field(default_factory=WorkerReport)
    # The latest backlog record seen: the dispatcher's, then each pick's.
    backlog: policy.Backlog | None = None
    # Finished tasks not yet counted in the backlog record's totals: added by the
    # next pick's write, or by one write when the worker stops.
    tallies: Tallies = NO_TALLIES
    # Seconds per task on this slot (run plus the writes and the pick between two
    # tasks): what an ETA needs. Measured from one pick to the next.
    cycle: float | None = None
    pick_at: float | None = None
    previous_pick: float | None = None
    # The next batch, picked ahead on a second thread while the last held task runs.
    picking_ahead: futures.Future[Tallies] | None = None
    pool: futures.Executor | None = None


class Worker(Service):
    """The worker Lambda's service: its loop reads as the steps named below."""

    def __init__(self, deps: Deps) -> None:
        super().__init__(deps)
        self.executor = Executor(deps)

    def picker(self) -> Picker:
        return Picker(self.deps)

    def run(self, handoff: Handoff) -> WorkerReport:
        """Hold the slot and run queued tasks, most urgent level first, until none are left.

        The worker stops taking tasks after its time budget (PQH_RUNNER_SECONDS; a
        fresh worker carries on), or if its slot lease was lost. Then it frees the
        slot and nudges the dispatcher, so a task submitted meanwhile is not stranded.
        """
        state = self._take_over_slot(handoff)
        if state is None:
            return WorkerReport(stopped_because="slot not ours")
        try:
            with state.heartbeat:
                # The dispatcher's read of the backlog record: saves this worker a read.
                state.backlog = policy.backlog_from_payload(handoff.backlog) if handoff.backlog else None
                while not self._should_stop(state):
                    picked = self._next_task(state)
                    if picked is None:
                        state.report.stopped_because = "queues empty"
                        break
                    self._announce(state, picked)
                    self._pick_ahead_if_wanted(state)
                    self._run_task(state, picked)
        finally:
            self._stop(state)
        return state.report

    # --- the steps ------------------------------------------------------------

    def _take_over_slot(self, handoff: Handoff) -> WorkerState | None:
        """Take the slot over under a holder of this run's own.

        A duplicate or retried invocation of the same hand-off, or one that comes
        after the lease ran out, finds it is not the holder and runs nothing.
        """
        s = self.settings
        began = self.clock()
        holder = uuid.uuid4().hex
        valid_until = began + s.lease_seconds
        if not self.control.take_over_slot(handoff.slot_id, handoff.slot_holder, holder, began, valid_until):
            log.warning("worker on slot %d started too late or twice; not running", handoff.slot_id)
            return None

        def renew() -> float | None:
            until = self.clock() + s.lease_seconds
            return until if self.control.renew_slot(handoff.slot_id, holder, until) else None

        clock = self.deps.worker_clock
        heartbeat = Heartbeat(renew, max(0.5, s.lease_seconds / 3), self.clock, valid_until, clock.start_timer)
        return WorkerState(
            handoff=handoff,
            holder=holder,
            began=began,
            heartbeat=heartbeat,
            picker=Picker(self.deps, policy.home_shard(handoff.slot_id, s.backlog_shards)),
            held=Held(self._put_back_now, OVERSTAY_FACTOR * s.prefetch_seconds, clock),
            deletes=PendingDeletes(self.queues, self.clock),
        )

    def _should_stop(self, state: WorkerState) -> bool:
        if state.heartbeat.lost:
            state.report.stopped_because = "slot lost"
            return True
        if self.clock() - state.began >= self.settings.runner_seconds:
            state.report.stopped_because = "time up"
            return True
        return False

    def _next_task(self, state: WorkerState) -> Picked | None:
        """The next held task; held tasks are picked (up to a batch, in one write) when none are left."""
        state.pick_at = self.clock()
        if state.previous_pick is not None and state.cycle is None:
            state.cycle = state.pick_at - state.previous_pick
        looked = False
        if state.picking_ahead is not None:  # started when nothing was held: its batch is next
            carried = state.picking_ahead.result()
            state.picking_ahead = None
            state.tallies = policy.add_tallies(state.tallies, carried)  # the ones it did not write
            # Its walk found the queues empty, or it picked: either way no
            # second look (a task counted after that walk is seen by the
            # check after the slot is freed, as with an inline pick), unless
            # its batch went straight back because a slow task was running.
            looked = not state.held.gave_back()
        if not state.held and not looked:
            most = self._batch_size(state)
            picks, state.tallies = state.picker.pick(
                state.backlog, state.handoff.full_walk, state.cycle, state.tallies, most
            )
            state.held.add(picks)
        return state.held.next()

    def _announce(self, state: WorkerState, picked: Picked) -> None:
        state.backlog = picked.backlog
        message = picked.message
        observability.task_event(
            "dispatched",
            message.task_id,
            message.user_id,
            None if self.settings.policy == "fifo" else picked.queue,  # under fifo, known at the start
            queue=picked.queue,
            slot=state.handoff.slot_id,
            wait_seconds=round(self.clock() - message.submitted_at, 3) if message.submitted_at else None,
        )
        state.report.levels.append(picked.queue)

    def _pick_ahead_if_wanted(self, state: WorkerState) -> None:
        """The last held task is next: pick the next batch on a second thread while it runs."""
        if state.held or not self._pick_ahead_wanted(state):
            return
        carry, state.tallies = state.tallies, NO_TALLIES  # the pick ahead writes these, or hands them back
        state.pool = state.pool or self.deps.pick_ahead_pool()
        most = self._batch_size(state)
        assert state.backlog is not None
        state.picking_ahead = state.pool.submit(
            self._pick_ahead, state.picker, state.held, state.backlog, state.handoff.full_walk, state.cycle, carry, most
        )

    def _run_task(self, state: WorkerState, picked: Picked) -> None:
        # The outcome is written before the next task starts, never alongside
        # it: a worker that dies starting the next task has recorded this one.
        state.held.running(pending=state.picking_ahead is not None)
        try:
            outcome = self.executor.run_one(
                picked.queue, picked.message, picked.counted, state.deletes, state.holder, picked.shard
            )
        finally:
            state.held.ran()
        state.deletes.flush_if_due()
        state.report.outcomes.append(outcome)
        if outcome in policy.TALLIES:
            state.tallies = policy.add_tallies(state.tallies, policy.tally(outcome))
        # Only a task that ran gives a cycle time; the next pick records it.
        state.previous_pick = state.pick_at if outcome in (SUCCESS, FAILURE) else None
        state.cycle = None

    def _stop(self, state: WorkerState) -> None:
        """Give back what was picked and not run, delete what finished, free the slot, nudge if needed."""
        if state.picking_ahead is not None:
            try:
                state.tallies = policy.add_tallies(state.tallies, state.picking_ahead.result())
            except Exception:  # they come back after the visibility timeout; the tick counts them
                log.exception("could not pick ahead")
        left = state.held.take_all()  # stopped with held tasks: they go back
        if left:
            try:
                state.picker.put_back(left)
            except Exception:  # they come back after the visibility timeout; the tick counts them
                log.exception("could not put %d picked tasks back", len(left))
        if state.pool is not None:
            state.pool.shutdown(wait=True)
        state.deletes.flush()
        # What the picks did not count rides on the release (the slot item's totals),
        # or, when the slot is no longer ours, on the backlog record.
        slot_id, tallies = state.handoff.slot_id, tuple(state.tallies)
        if not self.control.release_slot(slot_id, state.holder, tallies) and any(tallies):
            try:
                self.control.add_backlog(0, 0, tallies)
            except Exception:  # totals are approximate by design; the tasks are recorded
                log.exception("slot %d: %s finished tasks not counted in the totals", slot_id, tallies)
        if state.report.stopped_because != "queues empty" or self._anything_counted():
            self._nudge_dispatcher()
        # Else the queues were empty when this worker looked, and still are now that
        # its slot is free: a task submitted in between is counted, so it shows here.
        # One GetItem instead of a Lambda invoke and a dispatcher run per idle stop.

    # --- helpers --------------------------------------------------------------

    def _pick_ahead_wanted(self, state: WorkerState) -> bool:
        """Pick the next tasks during this one: only for short tasks, and with time left to run them."""
        s = self.settings
        if s.prefetch_seconds <= 0 or state.backlog is None or state.heartbeat.lost:
            return False
        average = state.backlog.run_seconds
        return 0 < average <= s.prefetch_seconds and self.clock() - state.began + average < s.runner_seconds

    def _batch_size(self, state: WorkerState) -> int:
        """About PQH_PREFETCH_SECONDS of tasks at the recent average, within the worker's time budget left."""
        s = self.settings
        average = state.backlog.run_seconds if state.backlog is not None else 0.0
        return policy.batch_size(average, s.prefetch_seconds, s.runner_seconds - (self.clock() - state.began))

    @staticmethod
    def _pick_ahead(
        picker: Picker,
        held: Held,
        backlog: policy.Backlog,
        full_walk: bool,
        cycle: float | None,
        carry: Tallies,
        most: int,
    ) -> Tallies:
        """A pick on the pick-ahead thread, into ``held``; returns the tallies it did not write."""
        picks, left = picker.pick(backlog, full_walk, cycle, carry, most)
        held.add(picks)
        return left

    def _put_back_now(self, picks: list[Picked]) -> None:
        """Tasks held behind a slow one: back to the queue, and a dispatcher run for any free slot."""
        try:
            Picker(self.deps).put_back(picks)
        except Exception:  # they come back after the visibility timeout; the tick counts them
            log.exception("could not put %d tasks held behind a slow one back", len(picks))
            return
        self._nudge_dispatcher()

    def _anything_counted(self) -> bool:
        try:
            shards = self.settings.backlog_shards
            if shards == 1:
                return any(count > 0 for count in self.control.backlog().counts)
            return any(count > 0 for count in policy.combined(self.control.backlogs(shards)).counts)
        except Exception:  # cannot tell: nudge
            log.exception("could not read the backlog; nudging the dispatcher")
            return True
