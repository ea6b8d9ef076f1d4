"""Queue position and ETA: from the counts and the policy, without reading any queue."""

from __future__ import annotations

import pytest

from chalicelib import policy
from chalicelib.policy import Backlog
from tests.fakes import World, make_world


def test_strict_position_is_the_higher_levels_plus_those_ahead_in_its_own() -> None:
    state = Backlog(counts=(2, 5, 3, 0, 0, 7), enqueued=(10, 20, 30, 0, 0, 40), dequeued=(8, 15, 27, 0, 0, 33))
    # Level 2, sequence number 29: 27 taken, so #28 is ahead of it.
    assert policy.queue_position(state, 2, 29, "strict") == 2 + 5 + 1
    assert policy.queue_position(state, 0, 9, "strict") == 0
    assert policy.queue_position(state, 5, 40, "strict") == 2 + 5 + 3 + 6


def test_fair_positions_follow_stride_order_worked_by_hand() -> None:
    # Three tasks at level 0 (share 32) and two at level 5 (share 1), every virtual
    # time 0. Stride scheduling, ties to the higher priority, by hand:
    #   pick 1: both at 0 -> level 0 (its pass becomes 1/32)
    #   pick 2: level 0 at 1/32, level 5 at 0 -> level 5 (its pass becomes 1)
    #   picks 3, 4: level 0 at 1/32, then 2/32, both below 1 -> level 0, level 0
    #   pick 5: level 5
    # So the order is 0, 5, 0, 0, 5: the positions are the picks before each task.
    state = Backlog(counts=(3, 0, 0, 0, 0, 2), enqueued=(3, 0, 0, 0, 0, 2), dequeued=(0,) * 6)
    assert [policy.queue_position(state, 0, seq, "fair") for seq in (1, 2, 3)] == [0, 2, 3]
    assert [policy.queue_position(state, 5, seq, "fair") for seq in (1, 2)] == [1, 4]
    # Under strict priority level 5 waits for all of level 0.
    assert [policy.queue_position(state, 5, seq, "strict") for seq in (1, 2)] == [3, 4]


def test_a_fair_position_counts_a_level_ahead_by_its_virtual_time() -> None:
    # Level 1 (share 16) has been served lately: its pass is 0.5 while the clock is at
    # 0.25. Level 4 (share 2) is at the clock. Order by hand: level 4 at 0.25 goes
    # first (pass -> 0.75), then level 1 at 0.5 (-> 0.5625), level 1 again at 0.5625,
    # then level 1 at 0.625, level 1 at 0.6875, and only then level 4 at 0.75.
    state = Backlog(
        counts=(0, 4, 0, 0, 2, 0),
        passes=(0.0, 0.5, 0.0, 0.0, 0.0, 0.0),
        vtime=0.25,
        enqueued=(0, 4, 0, 0, 2, 0),
        dequeued=(0,) * 6,
    )
    assert [policy.queue_position(state, 4, seq, "fair") for seq in (1, 2)] == [0, 5]
    assert [policy.queue_position(state, 1, seq, "fair") for seq in (1, 2, 3, 4)] == [1, 2, 3, 4]


def test_eta_is_the_tasks_ahead_run_capacity_at_a_time_after_the_first_busy_slot_frees() -> None:
    # Eleven queued on two slots of 3-s tasks, this one 11th: both slots busy, the
    # first frees after 3 / (2 + 1) = 1 s; then the ten ahead, two at a time: 1 + 15 = 16 s.
    state = Backlog(counts=(11, 0, 0, 0, 0, 0), enqueued=(11, 0, 0, 0, 0, 0))
    found = policy.estimate(state, 0, 11, 0.0, policy_name="strict", capacity=2, run_seconds=3.0)
    assert (found.position, found.eta_seconds) == (10, 16.0)
    alone = Backlog(counts=(1, 0, 0, 0, 0, 0), enqueued=(1, 0, 0, 0, 0, 0))
    assert policy.estimate(alone, 0, 1, 0.0, policy_name="strict", capacity=1, run_seconds=60.0).eta_seconds == 0.0


def test_moving_average_of_run_times() -> None:
    assert policy.moving_average(0.0, 4.0) == 4.0
    assert policy.moving_average(4.0, 9.0) == pytest.approx(5.0)


def test_positions_of_tasks_at_different_levels_and_as_they_move() -> None:
    w = make_world(capacity=1, policy="strict", task_seconds=2.0)
    heavy = [w.services.submitting.submit("heavy", i) for i in range(7)]  # levels 0,1,1,1,1,1,2
    light = w.services.submitting.submit("light", "l")  # level 0, second in its queue

    def position(task_id: str) -> tuple[int, float] | None:
        progress = w.services.results.progress(w.services.results.result(task_id))
        return None if progress is None else (progress.queue_position, progress.eta_seconds)

    # Eight queued on one slot: it counts as busy, with half a task (1 s) left.
    assert position(heavy[0].task_id) == (0, 1.0)
    assert position(light.task_id) == (1, 3.0)  # no run yet: PQH_TASK_SECONDS is the estimate
    assert position(heavy[1].task_id) == (2, 5.0)
    assert position(heavy[6].task_id) == (7, 15.0)
    w.services.dispatching.dispatch()

    def timed(x: object, ctx: object) -> None:
        w.clock.advance(3.0)  # tasks really take 3 s

    w.services.deps.task_function = timed
    (handoff,) = w.invoker.take_handoffs()
    w.services.worker.run(handoff)
    assert position(heavy[6].task_id) is None  # finished: no position
    assert w.control.backlog().run_seconds == pytest.approx(3.0)
    # A new task behind a fresh backlog gets an ETA from the measured 3 s.
    for i in range(3):
        w.services.submitting.submit(f"n{i}", i)
    late = w.services.submitting.submit("late", 0)
    assert position(late.task_id) == (3, pytest.approx(1.5 + 9.0))  # half a 3-s task, then three


def test_drifted_counters_never_put_more_ahead_than_are_queued() -> None:
    # Sequence numbers say 50 are ahead, but only 3 tasks are queued at the level.
    state = Backlog(counts=(0, 0, 3, 0, 0, 0), enqueued=(0, 0, 60, 0, 0, 0), dequeued=(0, 0, 9, 0, 0, 0))
    assert policy.queue_position(state, 2, 60, "strict") == 2


def _three_users_at_levels_0_and_1(**settings: object) -> tuple[World, list[str]]:
    """Tasks a0, a1, b0, b1, c0, c1 submitted in that order: x0 at level 0, x1 at level 1."""
    w = make_world(capacity=1, task_seconds=2.0, thresholds=(1, 2, 3, 4, 5), **settings)
    second: list[str] = []
    for user in "abc":
        assert w.services.submitting.submit(user, 0).priority_level == 0
        task = w.services.submitting.submit(user, 1)
        assert task.priority_level == 1
        second.append(task.task_id)
    return w, second


def _positions(w: World, task_ids: list[str]) -> list[tuple[int, float] | None]:
    progress = [w.services.results.progress(w.services.results.result(task_id)) for task_id in task_ids]
    return [None if p is None else (p.queue_position, p.eta_seconds) for p in progress]


def test_fair_positions_follow_the_configured_shares() -> None:
    # ETAs: six queued on one slot, so the slot is busy: half a 2-s run for it to free
    # (run / (capacity + 1) = 1 s), then 2 s per task ahead.
    # Equal shares: the two levels alternate, ties to level 0: 0, 1, 0, 1, 0, 1.
    w, level_1 = _three_users_at_levels_0_and_1(policy="fair", shares=(1, 1, 1, 1, 1, 1))
    assert _positions(w, level_1) == [(1, 3.0), (3, 7.0), (5, 11.0)]
    # The default shares (32 and 16) give 0, 1, 0, 0, 1, 1.
    w, level_1 = _three_users_at_levels_0_and_1(policy="fair")
    assert _positions(w, level_1) == [(1, 3.0), (4, 9.0), (5, 11.0)]
    # Strict: all of level 0 first.
    w, level_1 = _three_users_at_levels_0_and_1(policy="strict")
    assert _positions(w, level_1) == [(3, 7.0), (4, 9.0), (5, 11.0)]


def test_under_fifo_every_level_waits_in_one_queue_in_submission_order() -> None:
    w, level_1 = _three_users_at_levels_0_and_1(policy="fifo")
    assert _positions(w, level_1) == [(1, 3.0), (3, 7.0), (5, 11.0)]


def test_the_eta_counts_each_running_tasks_remaining_time_slot_by_slot() -> None:
    # Two slots of 3-s tasks: one task started 2 s ago (1 s left), one 0.5 s ago
    # (2.5 s left). This task is 4th at level 0, three ahead. Each takes the slot
    # that frees first: the 1st at 1.0 (ends 4.0), the 2nd at 2.5 (ends 5.5), the 3rd
    # at 4.0 (ends 7.0); this one at 5.5.
    state = Backlog(counts=(4, 0, 0, 0, 0, 0), enqueued=(4, 0, 0, 0, 0, 0))
    running = [(98.0, 3.0), (99.5, 3.0)]
    found = policy.estimate(state, 0, 4, 100.0, policy_name="strict", capacity=2, run_seconds=3.0, running=running)
    assert (found.position, found.eta_seconds) == (3, 5.5)
    # First in line: the soonest slot, 1 s.
    assert policy.estimate(state, 0, 1, 100.0, policy_name="strict", capacity=2, run_seconds=3.0, running=running) == (
        policy.Estimate(0, 1.0)
    )


def test_an_idle_slot_is_free_now_and_a_task_past_its_expected_end_ends_now() -> None:
    state = Backlog(counts=(2, 0, 0, 0, 0, 0), enqueued=(2, 0, 0, 0, 0, 0))
    # One of two slots idle, the other 2 s from its end: the 1st takes the idle slot
    # (ends 3.0), the 2nd the other when it frees, at 2.0.
    idle = [(99.0, 3.0)]
    assert policy.estimate(state, 0, 2, 100.0, policy_name="strict", capacity=2, run_seconds=3.0, running=idle) == (
        policy.Estimate(1, 2.0)
    )
    # One slot, its task 10 s past a 3-s expectation: taken to end now; the 1st then
    # runs 3 s, and the 2nd starts at 3.0.
    late = [(87.0, 3.0)]
    assert policy.estimate(state, 0, 2, 100.0, policy_name="strict", capacity=1, run_seconds=3.0, running=late) == (
        policy.Estimate(1, 3.0)
    )


def test_arrivals_that_go_first_stretch_the_wait_from_the_running_tasks() -> None:
    # One slot, its task 1.5 s from the end of 2 s; one task ahead at level 2: the
    # base wait is 1.5 + 2 = 3.5 s. Level 0 gets 0.25 tasks/s of 2-s tasks: load 0.5,
    # so 3.5 x 1.5 = 5.25 s under strict; fifo ignores arrivals (3.5 s).
    state = Backlog(
        counts=(0, 0, 2, 0, 0, 0),
        enqueued=(9, 0, 2, 0, 0, 0),
        arrival_rates=(0.25, 0.0, 0.0, 0.0, 0.0, 0.0),
        rated_enqueued=(9, 0, 2, 0, 0, 0),
        rated_at=500.0,
    )
    running = [(499.5, 2.0)]
    kwargs = {"capacity": 1, "run_seconds": 2.0, "running": running}
    assert policy.estimate(state, 2, 2, 500.0, policy_name="strict", **kwargs).eta_seconds == 5.25
    assert policy.estimate(state, 2, 2, 500.0, policy_name="fifo", **kwargs).eta_seconds == 3.5
