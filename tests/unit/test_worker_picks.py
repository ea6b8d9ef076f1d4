"""Which tasks a worker takes, in which order, and what it leaves counted when a pick goes wrong."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.domain import SUCCESS, Handoff
from chalicelib.policy import LEVELS
from chalicelib.ports import ALREADY_FINISHED
from chalicelib.settings import TASK_RUN_LEASE_SECONDS
from tests.fakes import make_world, record_takes

WAIT = 10.0  # a generous bound for the pick-ahead thread's step on a loaded machine


def _levels_0_and_1(**settings: object) -> Any:
    """Three users with one task at level 0 and one at level 1 each (a level per submission)."""
    w = make_world(capacity=1, thresholds=(1, 2, 3, 4, 5), **settings)
    for user in "abc":
        w.services.submitting.submit(user, 0)
        w.services.submitting.submit(user, 1)
    return w


def test_under_fair_a_worker_serves_the_levels_by_the_configured_shares() -> None:
    w = _levels_0_and_1(policy="fair", shares=(1, 1, 1, 1, 1, 1))
    w.services.dispatching.dispatch()
    (report,) = w.run_workers()
    assert report.levels == [0, 1, 0, 1, 0, 1]  # equal shares: the levels alternate
    w = _levels_0_and_1(policy="fair")
    w.services.dispatching.dispatch()
    (report,) = w.run_workers()
    assert report.levels == [0, 1, 0, 0, 1, 1]  # the default shares: level 0 twice as often


def test_a_worker_whose_pick_came_up_short_walks_the_queues_until_they_are_empty() -> None:
    w = make_world(capacity=1, policy="strict")
    first = w.services.submitting.submit("a", "first")  # level 0
    second = w.services.submitting.submit("a", "second")  # level 1
    w.control.add_backlog(0, -1)  # both counts lost in a fault ...
    w.control.add_backlog(1, -1)
    w.control.add_backlog(2, 1)  # ... and one counted at level 2 that has no message
    assert w.services.dispatching.dispatch().workers_started == 1  # not the tick's walk: a worker for the count
    (report,) = w.run_workers()
    # The pick at level 2 found nothing, so the worker walked, and walked again after each find.
    assert report.outcomes == [SUCCESS, SUCCESS] and report.stopped_because == "queues empty"
    assert w.ran == [first.task_id, second.task_id]
    assert w.control.backlog().counts == (0,) * LEVELS


def test_a_redelivered_task_found_by_the_walk_leaves_no_count_behind() -> None:
    w = make_world(capacity=1)
    task = w.services.submitting.submit("u", "x")
    w.pick(None, full_walk=True)  # a worker takes it ...
    w.tasks.start(task.task_id, "dead-run", w.clock.now, w.clock.now + TASK_RUN_LEASE_SECONDS)  # ... and dies
    w.clock.advance(w.queues.visibility_timeout + 1)  # SQS shows the message again, uncounted
    counted: list[tuple[int, ...]] = []
    w.services.deps.task_function = lambda x, ctx: counted.append(w.control.backlog().counts)
    w.services.dispatching.dispatch(full_walk=True)
    assert w.outcomes() == [SUCCESS]
    assert counted == [(0,) * LEVELS]  # the walk took no count, so it gave none back


def test_a_pick_that_fails_and_cannot_give_everything_back_restores_what_it_can() -> None:
    # The fair policy: its batches span levels (the priority policy's hold only level 0 ahead).
    w = make_world(capacity=1, fair_sample=1, policy="fair")
    for user in ("a", "b", "c"):
        w.services.submitting.submit(user, 1)  # level 0
        w.services.submitting.submit(user, 2)  # level 1
    receive, add_backlog = w.queues.receive, w.control.add_backlog

    def receive_failing_at_level_1(level: int, most: int, wait_seconds: int) -> Any:
        if level == 1:
            raise RuntimeError("SQS is down")
        return receive(level, most, wait_seconds)

    def give_back_failing(level: int, handles: list[str]) -> None:
        raise ConnectionError("SQS is unreachable")

    def add_backlog_failing_at_level_0(level: int, delta: int, tallies: Any = ()) -> int:
        if level == 0:
            raise ConnectionError("the control table is throttled")
        return add_backlog(level, delta, tallies)

    w.queues.receive = receive_failing_at_level_1  # type: ignore[method-assign]
    w.queues.give_back = give_back_failing  # type: ignore[method-assign]
    w.control.add_backlog = add_backlog_failing_at_level_0  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="SQS is down"):  # the error that stopped the pick
        w.pick(None, False, most=6)
    # Level 1's counts are back; level 0's messages return after their visibility timeout,
    # uncounted, for the tick's walk.
    assert w.control.backlog().counts[:2] == (0, 3)


def test_a_worker_that_cannot_read_the_backlog_as_it_stops_nudges_the_dispatcher() -> None:
    w = make_world(capacity=1)
    w.services.submitting.submit("u", 1)
    w.services.dispatching.dispatch()
    backlog = w.control.backlog
    reads = [0]

    def failing_after_the_pick() -> Any:
        reads[0] += 1
        if reads[0] > 1:
            raise ConnectionError("throttled")
        return backlog()

    w.control.backlog = failing_after_the_pick  # type: ignore[method-assign]
    before = w.invoker.dispatch_triggers
    assert w.outcomes() == [SUCCESS]
    assert w.invoker.dispatch_triggers == before + 1  # cannot tell whether anything is queued: nudge


def test_a_worker_handed_a_known_task_time_takes_a_seconds_worth_in_its_first_write() -> None:
    w = make_world(capacity=1, prefetch_seconds=1.0)

    def tenth_of_a_second(x: Any, ctx: Any) -> None:
        w.clock.advance(0.1)

    w.services.deps.task_function = tenth_of_a_second
    for i in range(2):
        w.services.submitting.submit(f"early{i}", i)
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS, SUCCESS]
    assert w.control.backlog().run_seconds == pytest.approx(0.1)  # measured between the two picks
    for i in range(5):
        w.services.submitting.submit(f"user{i}", i)
    takes = record_takes(w)  # tasks taken by each committed pick
    w.services.dispatching.dispatch()  # its hand-off carries the 0.1 s: a second of tasks is ten, five are queued
    assert w.outcomes() == [SUCCESS] * 5
    assert takes == [5]


def test_a_worker_whose_time_runs_out_during_a_pick_ahead_still_counts_every_finished_task() -> None:
    w = make_world(capacity=1, prefetch_seconds=1.0, runner_seconds=1.0)
    durations = iter([0.1, 0.1, 0.1, 1.0])

    def task(x: Any, ctx: Any) -> None:
        w.clock.advance(next(durations))

    w.services.deps.task_function = task
    for i in range(2):
        w.services.submitting.submit(f"early{i}", i)
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS, SUCCESS]  # the backlog now says tasks take 0.1 s
    for i in range(2):
        w.services.submitting.submit(f"user{i}", i)
    w.services.dispatching.dispatch()
    (report,) = w.run_workers()
    # Both in the first pick; a pick ahead (finding nothing) during the second, which
    # ran past the worker's second: it stops with that pick done and the first task
    # not yet counted by any write.
    assert report.outcomes == [SUCCESS, SUCCESS] and report.stopped_because == "time up"
    assert w.stats()["tasks"]["succeeded"] == 4


def test_the_ticks_worker_picking_ahead_still_walks_for_uncounted_messages() -> None:
    w = make_world(capacity=1, prefetch_seconds=1.0)
    w.services.deps.task_function = lambda x, ctx: w.clock.advance(0.1)
    for i in range(2):
        w.services.submitting.submit(f"early{i}", i)
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS, SUCCESS]  # the backlog now says tasks take 0.1 s
    counted = w.services.submitting.submit("a", "counted")
    lost = w.services.submitting.submit("b", "lost")
    w.control.add_backlog(0, -1)  # one of the two counts was lost in a fault
    w.services.dispatching.dispatch(full_walk=True)
    assert w.outcomes() == [SUCCESS, SUCCESS]  # one against the count, then a walk (picking ahead) finds the other
    assert [w.tasks.get(t.task_id).task_status for t in (counted, lost)] == [SUCCESS, SUCCESS]  # type: ignore[union-attr]


def test_the_time_per_task_behind_etas_counts_only_tasks_that_ran() -> None:
    w = make_world(capacity=1, policy="strict", prefetch_seconds=0.0)
    w.services.deps.task_function = lambda x, ctx: w.clock.advance(1.0)  # every task takes a second
    done = w.services.submitting.submit("x", "done")
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS]
    w.services.submitting.submit("a", "a")
    w.queues.send(0, done)  # a duplicate of a finished task, queued between a and b
    w.services.submitting.submit("b", "b")
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS, ALREADY_FINISHED, SUCCESS]
    # One second per task (what ETAs are made of): the skipped duplicate, which took no
    # time, is not a task's time.
    assert w.stats()["run_seconds_average"] == 1.0


def test_a_worker_handed_no_backlog_reads_it_and_takes_one_task_at_a_time_until_it_knows_their_time() -> None:
    w = make_world(capacity=1, prefetch_seconds=2.0)
    for i in range(3):
        w.services.submitting.submit(f"user{i}", i)
    w.services.dispatching.dispatch()
    (handoff,) = w.invoker.take_handoffs()
    takes = record_takes(w)  # tasks taken by each committed pick
    # A hand-off without the dispatcher's read of the backlog (as from an older dispatcher).
    report = w.services.worker.run(Handoff(handoff.slot_id, handoff.slot_holder, handoff.full_walk))
    assert report.outcomes == [SUCCESS] * 3
    assert takes == [1, 1, 1]  # tasks of unknown length (these took no time): one per pick


def test_a_worker_near_its_end_picks_ahead_only_what_it_has_time_to_run() -> None:
    w = make_world(capacity=1, prefetch_seconds=1.0, runner_seconds=0.6875)  # 5.5 tasks of 0.125 s
    w.services.deps.task_function = lambda x, ctx: w.clock.advance(0.125)
    for i in range(2):
        w.services.submitting.submit(f"early{i}", i)
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS, SUCCESS]  # the backlog now says tasks take 0.125 s
    for i in range(10):
        w.services.submitting.submit(f"user{i}", i)
    takes = record_takes(w)  # tasks taken by each committed pick
    w.services.dispatching.dispatch()
    (report,) = w.run_workers()
    # Five fit at the start; half a second in, with 0.1875 s left, one more does.
    assert takes == [5, 1]
    assert report.outcomes == [SUCCESS] * 6 and report.stopped_because == "time up"
    assert w.control.backlog().counts[0] == 4


def test_a_batch_picked_ahead_that_lands_after_the_watchdog_fired_goes_straight_back() -> None:
    w = make_world(capacity=1, prefetch_seconds=1.0)
    for i in range(12):
        w.services.submitting.submit(f"user{i}", i)
    w.services.dispatching.dispatch()
    ran: list[object] = []
    seen: dict[str, int] = {}

    def task(x: object, ctx: Any) -> str:
        ran.append(x)
        w.clock.advance(0.1)  # an average of 0.1 s: the batch picked during the second task is ten
        if len(ran) == 2:  # and this task is slow: the watchdog fires before that batch lands
            triggers = w.invoker.dispatch_triggers
            w.timers.advance(2.0)
            w.pick_ahead.run_pending()  # the batch lands now
            seen["counted"] = w.control.backlog().counts[0]
            seen["visible"] = sum(d.queued for d in w.queues.depths())
            seen["nudges"] = w.invoker.dispatch_triggers - triggers
        return "done"

    w.services.deps.task_function = task
    (report,) = w.run_workers()
    # The ten went back as they landed, visible and counted for any slot, with a nudge ...
    assert seen == {"counted": 10, "visible": 10, "nudges": 1}
    # ... and this worker went on picking once its slow task was done.
    assert report.outcomes == [SUCCESS] * 12 and report.stopped_because == "queues empty"
    assert sorted(ran) == list(range(12))
