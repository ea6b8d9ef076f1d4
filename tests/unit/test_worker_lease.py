"""A worker holds its slot only while its lease is live: it renews it during long tasks and stops when it cannot."""

from __future__ import annotations

from typing import Any

from chalicelib.domain import PENDING, SUCCESS
from chalicelib.worker.heartbeat import Heartbeat
from tests.fakes import ManualTimers, make_world


def test_a_long_task_keeps_its_slot_the_lease_renewed_from_the_time_of_renewal() -> None:
    w = make_world(capacity=1, lease_seconds=3)  # a renewal every second
    timers = ManualTimers()
    w.services.deps.worker_clock = timers.clock()
    renew = w.control.renew_slot
    leases: list[float] = []
    throttled = [1]

    def flaky_renew(slot_id: int, holder: str, lease_until: float) -> bool:
        if throttled[0]:  # the first renewal fails; the heartbeat tries again
            throttled[0] -= 1
            raise RuntimeError("throttled")
        granted = renew(slot_id, holder, lease_until)
        leases.append(w.control.slots(1)[0].lease_until if granted else 0.0)
        return granted

    def long_task(x: Any, ctx: Any) -> str:
        if x != "long":
            return "done"
        w.clock.advance(2)  # two seconds in: the lease granted at the start has one left
        timers.advance(1)  # the first renewal is throttled
        assert leases == []
        timers.advance(1)  # the next one is granted, from the time of renewal
        assert leases == [w.clock.now + 3]
        return "done"

    w.control.renew_slot = flaky_renew  # type: ignore[method-assign]
    w.services.deps.task_function = long_task
    first = w.services.submitting.submit("u", "long")
    second = w.services.submitting.submit("v", "short")
    w.services.dispatching.dispatch()
    (report,) = w.run_workers()
    # The renewed lease let the worker go on to the next task, and it let the slot go after.
    assert report.outcomes == [SUCCESS, SUCCESS] and report.stopped_because == "queues empty"
    assert [w.tasks.get(t.task_id).task_status for t in (first, second)] == [SUCCESS, SUCCESS]  # type: ignore[union-attr]
    assert w.control.slots(1)[0].is_free(w.clock.now)


def test_a_worker_whose_renewals_fail_stops_half_a_renewal_interval_before_its_lease_runs_out() -> None:
    w = make_world(capacity=1, lease_seconds=3)  # renewals every second; stop half a second before the end
    timers = ManualTimers()
    w.services.deps.worker_clock = timers.clock()

    def down(slot_id: int, holder: str, lease_until: float) -> bool:
        raise RuntimeError("throttled")

    durations = iter([2.25, 0.25, 0.25])

    def task(x: Any, ctx: Any) -> None:
        seconds = next(durations)
        w.clock.advance(seconds)
        timers.advance(seconds)  # every renewal due meanwhile fails

    w.control.renew_slot = down  # type: ignore[method-assign]
    w.services.deps.task_function = task
    tasks = [w.services.submitting.submit(f"u{i}", i) for i in range(3)]
    w.services.dispatching.dispatch()
    (report,) = w.run_workers()
    # 2.25 s into a 3-s lease it takes another task; at 2.5 s it stops.
    assert report.outcomes == [SUCCESS, SUCCESS] and report.stopped_because == "slot lost"
    assert w.tasks.get(tasks[2].task_id).task_status == PENDING  # type: ignore[union-attr]
    assert w.control.backlog().counts[0] == 1  # left queued and counted, for the next worker


def test_a_worker_whose_slot_was_taken_over_finishes_its_task_and_runs_no_more() -> None:
    w = make_world(capacity=1, lease_seconds=3)
    timers = ManualTimers()
    w.services.deps.worker_clock = timers.clock()
    renew = w.control.renew_slot
    refused: list[bool] = []

    def watched_renew(slot_id: int, holder: str, lease_until: float) -> bool:
        granted = renew(slot_id, holder, lease_until)
        refused.append(not granted)
        return granted

    def task(x: Any, ctx: Any) -> None:
        if x == 0:
            # The slot goes to another holder (its lease looked over to someone else).
            holder = w.control.slots(1)[0].holder
            assert w.control.take_over_slot(0, holder or "", "another", w.clock.now, w.clock.now + 3)
            timers.advance(1)  # the next renewal is refused
            assert refused == [True]
            timers.advance(10)  # and the heartbeat renews no more
            assert refused == [True]

    w.control.renew_slot = watched_renew  # type: ignore[method-assign]
    w.services.deps.task_function = task
    tasks = [w.services.submitting.submit(f"u{i}", i) for i in range(2)]
    w.services.dispatching.dispatch()
    (report,) = w.run_workers()
    assert report.outcomes == [SUCCESS] and report.stopped_because == "slot lost"
    assert w.tasks.get(tasks[1].task_id).task_status == PENDING  # type: ignore[union-attr]
    assert w.control.slots(1)[0].holder == "another"  # not released from under its new holder


def test_a_heartbeat_whose_renewals_fail_counts_the_slot_lost_at_most_five_seconds_before_the_lease_ends() -> None:
    w = make_world()

    def failing() -> float | None:
        raise RuntimeError("throttled")

    # A 60-s lease renewed every 20 s: half an interval would be 10 s; five is enough.
    beat = Heartbeat(
        failing, interval=20, clock=w.clock, valid_until=w.clock.now + 60, start_timer=ManualTimers().start
    )
    w.clock.advance(54.5)
    assert not beat.lost
    w.clock.advance(0.5)
    assert beat.lost
