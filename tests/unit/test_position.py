"""Queue position and ETA: from the counts and the policy, without reading any queue."""

from __future__ import annotations

import pytest

from chalicelib import policy
from chalicelib.policy import Backlog
from tests.fakes import make_world


def replay(state: Backlog, level: int, ahead_in_level: int, policy_name: str) -> int:
    """Brute force: pick until the task's turn, counting the picks before it."""
    picks, taken = 0, 0
    while True:
        chosen = policy.choose_level(state, policy_name)
        assert chosen is not None
        if chosen == level:
            if taken == ahead_in_level:
                return picks
            taken += 1
        picks += 1
        state = policy.after_pick(state, chosen, policy_name)


def test_strict_position_is_the_higher_levels_plus_those_ahead_in_its_own() -> None:
    state = Backlog(counts=(2, 5, 3, 0, 0, 7), enqueued=(10, 20, 30, 0, 0, 40), dequeued=(8, 15, 27, 0, 0, 33))
    # Level 2, sequence number 29: 27 taken, so #28 is ahead of it.
    assert policy.queue_position(state, 2, 29, "strict") == 2 + 5 + 1
    assert policy.queue_position(state, 0, 9, "strict") == 0
    assert policy.queue_position(state, 5, 40, "strict") == 2 + 5 + 3 + 6


@pytest.mark.parametrize("level", range(policy.LEVELS))
def test_fair_position_replays_the_policy(level: int) -> None:
    state = Backlog(
        counts=(3, 4, 5, 6, 7, 8),
        passes=(0.5, 0.2, 0.0, 0.7, 0.1, 0.0),
        vtime=0.1,
        enqueued=(3, 4, 5, 6, 7, 8),
        dequeued=(0,) * 6,
    )
    for seq in range(1, state.counts[level] + 1):
        assert policy.queue_position(state, level, seq, "fair") == replay(state, level, seq - 1, "fair")
    # The fair policy starts a level-5 task long before strict would.
    assert policy.queue_position(state, 5, 1, "fair") < policy.queue_position(state, 5, 1, "strict")


def test_eta_is_the_tasks_ahead_run_capacity_at_a_time() -> None:
    assert policy.eta_seconds(10, 2, 3.0) == 15.0
    assert policy.eta_seconds(0, 1, 60.0) == 0.0


def test_moving_average_of_run_times() -> None:
    assert policy.moving_average(0.0, 4.0) == 4.0
    assert policy.moving_average(4.0, 9.0) == pytest.approx(5.0)


def test_positions_of_tasks_at_different_levels_and_as_they_move() -> None:
    w = make_world(capacity=1, policy="strict", task_seconds=2.0)
    heavy = [w.services.submit("heavy", i) for i in range(7)]  # levels 0,1,1,1,1,1,2
    light = w.services.submit("light", "l")  # level 0, second in its queue

    def position(task_id: str) -> tuple[int, float] | None:
        progress = w.services.progress(w.services.result(task_id))
        return None if progress is None else (progress.queue_position, progress.eta_seconds)

    assert position(heavy[0].task_id) == (0, 0.0)
    assert position(light.task_id) == (1, 2.0)  # no run yet: PQH_TASK_SECONDS is the estimate
    assert position(heavy[1].task_id) == (2, 4.0)
    assert position(heavy[6].task_id) == (7, 14.0)
    w.services.dispatch()

    def timed(x: object, ctx: object) -> None:
        w.clock.advance(3.0)  # tasks really take 3 s

    w.services.task_function = timed
    (handoff,) = w.invoker.take_handoffs()
    w.services.run(handoff)
    assert position(heavy[6].task_id) is None  # finished: no position
    assert w.control.backlog().run_seconds == pytest.approx(3.0)
    # A new task behind a fresh backlog gets an ETA from the measured 3 s.
    for i in range(3):
        w.services.submit(f"n{i}", i)
    late = w.services.submit("late", 0)
    assert position(late.task_id) == (3, pytest.approx(9.0))


def test_drifted_counters_never_put_more_ahead_than_are_queued() -> None:
    # Sequence numbers say 50 are ahead, but only 3 tasks are queued at the level.
    state = Backlog(counts=(0, 0, 3, 0, 0, 0), enqueued=(0, 0, 60, 0, 0, 0), dequeued=(0, 0, 9, 0, 0, 0))
    assert policy.queue_position(state, 2, 60, "strict") == 2
