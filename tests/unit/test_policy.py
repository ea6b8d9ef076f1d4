"""The pure policy, tested exhaustively."""

from __future__ import annotations

import pytest

from chalicelib import policy
from chalicelib.policy import Slot


def expected_level(count: int) -> int:
    # The old service's table, written out independently of the code.
    if count == 0:
        return 0
    if count <= 5:
        return 1
    if count <= 15:
        return 2
    if count <= 25:
        return 3
    if count <= 35:
        return 4
    return 5


@pytest.mark.parametrize("count", range(0, 60))
def test_default_thresholds_match_the_old_table(count: int) -> None:
    assert policy.level_for(count, 1) == expected_level(count)


@pytest.mark.parametrize("weight", [1, 2, 3, 6, 10])
@pytest.mark.parametrize("count", range(0, 80))
def test_level_uses_count_integer_divided_by_weight(count: int, weight: int) -> None:
    assert policy.level_for(count, weight) == expected_level(count // weight)


def test_weight_six_with_five_tasks_stays_at_level_zero() -> None:
    assert policy.level_for(5, 6) == 0  # the old README's own example


def test_custom_thresholds() -> None:
    thresholds = (2, 4, 8, 16, 32)
    assert [policy.level_for(c, 1, thresholds) for c in (0, 1, 2, 3, 4, 7, 8, 31, 32, 1000)] == [
        0,
        0,
        1,
        1,
        2,
        2,
        3,
        4,
        5,
        5,
    ]


@pytest.mark.parametrize("bad", [(), (1, 2, 3, 4), (0, 6, 16, 26, 36), (1, 6, 6, 26, 36), (1, 6, 16, 26, 36, 40)])
def test_bad_thresholds_are_rejected(bad: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        policy.validate_thresholds(bad)


def test_weight_below_one_is_rejected() -> None:
    with pytest.raises(ValueError):
        policy.level_for(3, 0)


def test_a_submission_counts_for_at_least_t_and_at_most_t_plus_b() -> None:
    window, bucket = 6000, 600
    for submitted in (0.0, 1.0, 599.9, 600.0, 12345.6):
        start = policy.bucket_start(submitted, bucket)
        expiry = policy.bucket_expiry(start, bucket, window)
        assert expiry - submitted >= window
        assert expiry - submitted <= window + bucket
        assert policy.live_count([(expiry, 1)], submitted + window - 0.001) == 1
        assert policy.live_count([(expiry, 1)], expiry) == 0  # expired counts as zero


def test_live_count_ignores_expired_buckets() -> None:
    assert policy.live_count([(100.0, 3), (200.0, 4), (50.0, 9)], now=99.0) == 7
    assert policy.live_count([(100.0, 3), (200.0, 4)], now=100.0) == 4
    assert policy.live_count([], now=0.0) == 0


def test_free_slots_respect_live_leases_and_capacity() -> None:
    slots = [Slot(0, "a", 110.0), Slot(1, "b", 90.0), Slot(3, None, 0.0), Slot(5, "z", 999.0)]
    assert policy.free_slots(slots, capacity=4, now=100.0) == [1, 2, 3]
    assert policy.free_slots(slots, capacity=1, now=100.0) == []
    assert policy.free_slots(slots, capacity=1, now=110.0) == [0]  # lease ran out
    assert policy.free_slots([], capacity=3, now=0.0) == [0, 1, 2]


def test_the_highest_backlogged_level_goes_next() -> None:
    assert policy.highest_backlogged([0, 2, 0, 0, 5, 1]) == 1
    assert policy.highest_backlogged([0, 0, 0, 0, 0, 1]) == 5
    assert policy.highest_backlogged([0] * 6) is None


def test_workers_wanted_is_one_per_queued_task_up_to_the_free_slots() -> None:
    assert policy.workers_wanted(4, [0, 1, 0, 0, 0, 1]) == 2
    assert policy.workers_wanted(1, [0, 1, 0, 0, 0, 1]) == 1
    assert policy.workers_wanted(3, [0] * 6) == 0
    assert policy.workers_wanted(3, [0] * 6, full_walk=True) == 1
    assert policy.workers_wanted(0, [9] * 6, full_walk=True) == 0


@pytest.mark.parametrize("policy_name", policy.POLICIES)
@pytest.mark.parametrize("most", [1, 3, 10])
def test_a_planned_batch_is_the_same_as_single_picks_in_a_row(policy_name: str, most: int) -> None:
    state = policy.Backlog(counts=(1, 0, 3, 0, 5, 7), passes=(0.0, 0.0, 0.5, 0.0, 0.25, 1.0), vtime=0.25)
    levels, after = policy.plan_picks(state, most, policy_name)
    one_by_one, current = [], state
    while len(one_by_one) < most and (level := policy.choose_level(current, policy_name)) is not None:
        one_by_one.append(level)
        current = policy.after_pick(current, level, policy_name)
    assert levels == one_by_one and after == current and len(levels) == most


def test_a_batch_plan_stops_when_nothing_is_left() -> None:
    levels, after = policy.plan_picks(policy.Backlog(counts=(0, 2, 0, 0, 0, 1)), 10, "strict")
    assert levels == [1, 1, 5] and after.counts == (0,) * policy.LEVELS
    assert policy.plan_picks(policy.Backlog(), 10, "fair") == ([], policy.Backlog())


@pytest.mark.parametrize(
    ("run_seconds", "ahead", "left", "size"),
    [
        (0.0, 1.0, 240.0, 1),  # no average yet: one at a time
        (0.1, 0.0, 240.0, 1),  # prefetch off: one at a time
        (0.1, 1.0, 240.0, 10),  # a second of 0.1-s tasks
        (0.01, 1.0, 240.0, 10),  # never more than one receive holds
        (0.3, 1.0, 240.0, 3),
        (0.1, 1.0, 0.35, 3),  # no more than fit in the time the worker has left
        (2.0, 1.0, 240.0, 1),  # long tasks: one at a time
        (0.1, 1.0, -1.0, 1),
    ],
)
def test_a_batch_holds_about_the_prefetch_seconds_of_work(
    run_seconds: float, ahead: float, left: float, size: int
) -> None:
    assert policy.batch_size(run_seconds, ahead, left) == size


def test_a_batch_within_a_level_runs_the_least_used_users_first() -> None:
    sample = [(3.0, 10.0), (0.0, 12.0), (1.0, 5.0), (0.0, 11.0), (2.0, 1.0)]
    assert policy.pick_within_level_many(sample, 3) == [3, 1, 2]
    assert policy.pick_within_level_many(sample, 1) == [policy.pick_within_level(sample)]
    assert policy.pick_within_level_many(sample, 9) == [3, 1, 2, 4, 0]


def test_takes_name_levels_and_counts() -> None:
    assert policy.takes_of({1: 2, 4: 0, 5: 1}) == {1: 2, 5: 1}
    for bad in ({}, {4: 0}, {6: 1}, {1: -1}, {-1: 1}):
        with pytest.raises(ValueError, match="not a pick"):
            policy.takes_of(bad)


@pytest.mark.parametrize(
    ("counts", "capacity", "share"),
    [
        ((0, 0, 0, 0, 40, 0), 4, 10),
        ((0, 0, 3, 0, 2, 0), 4, 2),
        ((0,) * 6, 4, 1),
        ((1, 0, 0, 0, 0, -2), 1, 1),
        ((9,) + (0,) * 5, 2, 5),
    ],
)
def test_a_batch_takes_at_most_its_slots_share_of_the_backlog(
    counts: tuple[int, ...], capacity: int, share: int
) -> None:
    assert policy.batch_share(counts, capacity) == share
