"""The fair policy: bounded starvation, weights, fairness inside a level, and the fifo baseline."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from chalicelib import policy
from chalicelib.policy import Backlog
from tests.fakes import make_world


def simulate(counts: list[int], picks: int, policy_name: str = "fair", arrivals: float = 0.0) -> list[int]:
    """Run the pure policy for ``picks`` picks; ``arrivals`` tops levels up at random."""
    rng = random.Random(7)
    state = Backlog(tuple(counts))
    chosen = []
    for _ in range(picks):
        if arrivals and rng.random() < arrivals:
            grown = list(state.counts)
            grown[rng.randrange(policy.LEVELS)] += 1
            state = Backlog(tuple(grown), state.passes, state.vtime, state.version)
        level = policy.choose_level(state, policy_name)
        if level is None:
            break
        chosen.append(level)
        state = policy.after_pick(state, level, policy_name)
    return chosen


def test_strict_starves_a_backlogged_level_5() -> None:
    picks = simulate([1000, 0, 0, 0, 0, 1000], 500, "strict")
    assert 5 not in picks


# The floor in docs/policy.md: with shares 32:16:8:4:2:1, a backlogged level L gets at least
# share[L] / (sum of the backlogged levels' shares) of the picks. Written out here
# by hand, per case, rather than computed by the policy module.
FLOORS = {
    (0, 5): {0: 32 / 33, 5: 1 / 33},
    (0, 1, 5): {0: 32 / 49, 1: 16 / 49, 5: 1 / 49},
    (1, 2, 5): {1: 16 / 25, 2: 8 / 25, 5: 1 / 25},
    (0, 1, 2, 3, 4, 5): {0: 32 / 63, 1: 16 / 63, 2: 8 / 63, 3: 4 / 63, 4: 2 / 63, 5: 1 / 63},
    (2, 3): {2: 8 / 12, 3: 4 / 12},
    (4, 5): {4: 2 / 3, 5: 1 / 3},
}


@pytest.mark.parametrize("backlogged", list(FLOORS))
def test_every_backlogged_level_gets_at_least_its_share_of_picks(backlogged: tuple[int, ...]) -> None:
    counts = [10_000 if level in backlogged else 0 for level in range(policy.LEVELS)]
    for window in (63, 200, 1000):
        picks = simulate(counts, window)
        got = Counter(picks)
        for level in backlogged:
            floor = FLOORS[backlogged][level] * window
            assert got[level] >= int(floor) - 1, (level, window, got)


def test_guaranteed_share_is_the_level_share_over_the_backlogged_levels_shares() -> None:
    assert policy.guaranteed_share(5, (0, 5)) == pytest.approx(1 / 33)
    assert policy.guaranteed_share(1, (0, 1, 5)) == pytest.approx(16 / 49)
    assert policy.guaranteed_share(3, (2,)) == pytest.approx(4 / 12)  # a level counts itself as backlogged


def test_the_share_floor_holds_in_every_stretch_under_random_arrivals() -> None:
    picks = simulate([50, 50, 50, 50, 50, 5000], 3000, arrivals=0.6)
    # Level 5 stays backlogged throughout; in any run of 63 picks it gets at least one
    # (its share is 1 of at most 32+16+8+4+2+1 = 63).
    for start in range(0, len(picks) - 63):
        assert 5 in picks[start : start + 63]


def test_a_level_that_was_idle_banks_no_credit() -> None:
    state = Backlog((0, 0, 0, 0, 0, 100))
    for _ in range(500):  # level 5 alone for a long time
        state = policy.after_pick(state, 5, "fair")
    state = Backlog((100, 0, 0, 0, 0, 99), state.passes, state.vtime, state.version)
    picks = []
    for _ in range(66):
        level = policy.choose_level(state, "fair")
        assert level is not None
        picks.append(level)
        state = policy.after_pick(state, level, "fair")
    assert Counter(picks)[0] >= 60  # level 0 is not made to wait for level 5's "debt"
    assert picks[0] == 0  # a newly backlogged level goes first (ties go to the higher priority)


def test_fifo_sends_every_level_to_one_queue() -> None:
    assert {policy.queue_level(level, "fifo") for level in range(policy.LEVELS)} == {0}
    assert [policy.queue_level(level, "fair") for level in range(policy.LEVELS)] == list(range(policy.LEVELS))


def test_pick_within_level_prefers_the_user_who_had_used_least() -> None:
    sample = [(7.0, 1.0), (8.0, 2.0), (3.0, 9.0), (9.0, 3.0)]  # (tag, submitted_at)
    assert policy.pick_within_level(sample) == 2
    assert policy.pick_within_level([(4.0, 5.0), (4.0, 4.0)]) == 1  # then the oldest
    assert policy.pick_within_level([(0.0, 5.0)]) == 0


@pytest.mark.parametrize(("policy_name", "light_position"), [("fair", 1), ("strict", 9)])
def test_inside_a_level_a_light_user_does_not_wait_behind_a_heavy_users_run(
    policy_name: str, light_position: int
) -> None:
    w = make_world(capacity=1, policy=policy_name, window_buckets=1)
    w.services.accounts.set_weight("heavy", 1000)  # keeps heavy at level 0 here: the test is about one level
    # heavy's first task and light's have the same usage (none): the older goes first, then light
    for i in range(9):
        w.services.submitting.submit("heavy", f"h{i}")
    w.services.submitting.submit("light", "l")
    w.services.dispatching.dispatch()
    w.run_workers()
    assert [w.tasks.get(t).x for t in w.ran].index("l") == light_position  # type: ignore[union-attr]


def test_fifo_runs_in_arrival_order_across_levels() -> None:
    w = make_world(capacity=1, policy="fifo")
    for i in range(8):
        w.services.submitting.submit("heavy", i)  # levels 0,1,1,1,1,1,2,2
    w.services.submitting.submit("light", "l")  # level 0, but last to arrive
    w.services.dispatching.dispatch()
    w.run_workers()
    assert [w.tasks.get(t).x for t in w.ran] == [0, 1, 2, 3, 4, 5, 6, 7, "l"]  # type: ignore[union-attr]


def test_when_everyone_is_backlogged_service_follows_the_weights() -> None:
    """Closed loop: each user keeps 3 tasks queued, weights 1, 2 and 4, one slot, 600 tasks."""
    w = make_world(capacity=1, window_seconds=100_000, window_buckets=1)
    weights = {"w1": 1, "w2": 2, "w4": 4}
    for user, weight in weights.items():
        w.services.accounts.set_weight(user, weight)
        for _ in range(3):
            w.services.submitting.submit(user, user)
    served: Counter[str] = Counter()

    def task(x: object, ctx: object) -> None:
        if sum(served.values()) < 600:
            served[str(x)] += 1
            w.services.submitting.submit(str(x), x)  # the user tops their queue up again

    w.services.deps.task_function = task
    w.services.dispatching.dispatch()
    w.run_workers()
    assert sum(served.values()) == 600
    # Everyone ends at level 5; inside it the tags (count / weight) keep service at 1 : 2 : 4.
    assert served["w2"] / served["w1"] == pytest.approx(2, rel=0.1)
    assert served["w4"] / served["w1"] == pytest.approx(4, rel=0.1)
