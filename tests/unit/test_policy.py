"""The pure policy, tested exhaustively."""

from __future__ import annotations

import pytest

from chalicelib import policy
from chalicelib.policy import Backlog, Slot


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


@pytest.mark.parametrize(
    ("policy_name", "state"),
    [
        ("fair", policy.Backlog(counts=(1, 0, 3, 0, 5, 7), passes=(0.0, 0.0, 0.5, 0.0, 0.25, 1.0), vtime=0.25)),
        ("fifo", policy.Backlog(counts=(1, 0, 3, 0, 5, 7))),
        # Priority order holds back lower levels in a batch: level 0 alone, then the floor.
        ("strict", policy.Backlog(counts=(12, 0, 3, 0, 5, 7))),
        (
            "priority",
            policy.Backlog(counts=(12, 0, 3, 0, 5, 7), dequeued=(20, 0, 0, 0, 0, 0), stamps=(20, 20, 16, 20, 12, 0)),
        ),
    ],
)
@pytest.mark.parametrize("most", [1, 3, 10])
def test_a_planned_batch_is_the_same_as_single_picks_in_a_row(
    policy_name: str, state: policy.Backlog, most: int
) -> None:
    levels, after = policy.plan_picks(state, most, policy_name)
    one_by_one, current = [], state
    while len(one_by_one) < most and (level := policy.choose_level(current, policy_name)) is not None:
        one_by_one.append(level)
        current = policy.after_pick(current, level, policy_name)
    assert levels == one_by_one and after == current and len(levels) == most


def test_a_batch_plan_stops_when_nothing_is_left() -> None:
    levels, after = policy.plan_picks(policy.Backlog(counts=(0, 2, 0, 0, 0, 1)), 10, "fifo")
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


# --- Edges the mutation run found unguarded (docs/testing.md) ---------------------


def test_threshold_errors_say_what_is_expected() -> None:
    with pytest.raises(ValueError, match=r"^need 5 lower bounds \(levels 1\.\.5\), got 4$"):
        policy.validate_thresholds([1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"^the bound of level 1 must be at least 1 \(a count of 0 is level 0\)$"):
        policy.validate_thresholds([0, 2, 3, 4, 5])
    with pytest.raises(ValueError, match=r"^bounds must be strictly increasing$"):
        policy.validate_thresholds([1, 2, 2, 4, 5])
    policy.validate_thresholds([1, 2, 3, 4, 5])  # the smallest allowed: one submission is level 1


def test_a_weight_below_one_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^weight must be at least 1$"):
        policy.charged_count(3, 0)


def test_the_charged_count_is_a_whole_number() -> None:
    assert policy.charged_count(7, 2) == 3
    assert isinstance(policy.charged_count(7, 2), int)


def test_a_payload_round_trips_every_field() -> None:
    state = Backlog(
        counts=(1, 2, 3, 4, 5, 6),
        passes=(0.5, 0.25, 0.0, 1.0, 2.0, 3.0),
        vtime=0.75,
        version=9,
        enqueued=(10, 11, 12, 13, 14, 15),
        dequeued=(9, 9, 9, 9, 9, 9),
        run_seconds=1.5,
        tallies=(7, 8, 9),
        withdrawn=(1, 0, 0, 0, 0, 2),
        stamps=(3, 4, 5, 6, 7, 8),
        arrival_rates=(0.5, 0.25, 0.0, 0.0, 0.125, 2.0),
        rated_enqueued=(10, 11, 12, 13, 14, 15),
        rated_at=1234.5,
    )
    assert policy.backlog_from_payload(policy.backlog_to_payload(state)) == state
    wrong_tallies = {**policy.backlog_to_payload(state), "tallies": [1, 2]}
    assert policy.backlog_from_payload(wrong_tallies) is None
    wrong_counts = {**policy.backlog_to_payload(state), "counts": [1, 2, 3]}
    assert policy.backlog_from_payload(wrong_counts) is None


def test_tallies_add_up_and_empty_ones_count_as_zero() -> None:
    assert policy.add_tallies((1, 2, 3), (10, 20, 30)) == (11, 22, 33)
    assert policy.add_tallies((), (0, 1, 0)) == (0, 1, 0)
    assert policy.add_tallies((0, 0, 1), ()) == (0, 0, 1)
    with pytest.raises(ValueError):
        policy.add_tallies((1, 2), (1, 2, 3))  # a malformed record is an error, not a silent drop


def test_fair_ties_go_to_the_higher_priority() -> None:
    assert policy.choose_level(Backlog(counts=(1,) * 6), "fair") == 0
    assert policy.choose_level(Backlog(counts=(0, 0, 1, 0, 1, 0)), "fair") == 2


def test_a_pick_moves_every_field_it_owns() -> None:
    state = Backlog(counts=(2, 0, 0, 0, 3, 0), passes=(0.0, 0.0, 0.0, 0.0, 0.5, 0.0), vtime=1.0, version=4)
    after = policy.after_pick(state, 4, "fair")
    assert after.counts == (2, 0, 0, 0, 2, 0)
    assert after.dequeued == (0, 0, 0, 0, 1, 0)
    assert after.version == 5
    # It started at the clock (1.0, its own pass of 0.5 is behind it) and moves on by 1/share (share 2).
    assert after.vtime == 1.0 and after.passes[4] == 1.5
    again = policy.after_pick(after, 4, "fair")
    assert again.dequeued == (0, 0, 0, 0, 2, 0) and again.version == 6 and again.passes[4] == 2.0
    strict = policy.after_pick(state, 0, "strict")
    assert strict.passes == state.passes and strict.vtime == state.vtime and strict.version == 5


def test_plan_picks_uses_the_shares_it_is_given() -> None:
    state = Backlog(counts=(5, 5, 0, 0, 0, 0))
    default, _ = policy.plan_picks(state, 4, "fair")
    assert default == [0, 1, 0, 0]  # 32:16: level 1 once in three
    equal, _ = policy.plan_picks(state, 4, "fair", shares=(1, 1, 1, 1, 1, 1))
    assert equal == [0, 1, 0, 1]  # equal shares take turns


def test_percentile_is_the_nearest_rank() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert policy.percentile(values, 0.0) == 1.0
    assert policy.percentile(values, 0.5) == 3.0
    assert policy.percentile(values, 1.0) == 5.0
    assert policy.percentile([10.0, 20.0], 1.0) == 20.0
    assert policy.percentile([], 0.5) is None


def test_a_small_first_average_is_smoothed_like_any_other() -> None:
    assert policy.moving_average(0.5, 2.0) == pytest.approx(0.8)  # 0.8 * 0.5 + 0.2 * 2


def test_a_task_whose_level_is_counted_empty_still_gets_a_position() -> None:
    # The counts say level 0 is empty (they drift after faults), but this task is there.
    state = Backlog(counts=(0, 3, 0, 0, 0, 0), enqueued=(1, 3, 0, 0, 0, 0))
    assert policy.queue_position(state, 0, 1, "strict") == 0
    assert policy.queue_position(state, 0, 1, "fair") == 0


def test_a_hand_off_without_the_priority_fields_starts_them_at_zero() -> None:
    # A dispatcher of the version before them hands off no stamps, rates or withdrawn counts.
    older = {
        "counts": [1, 0, 0, 0, 0, 0],
        "passes": [0.0] * 6,
        "vtime": 0.0,
        "version": 3,
        "enqueued": [1, 0, 0, 0, 0, 0],
        "dequeued": [0] * 6,
        "run_seconds": 0.0,
        "tallies": [0, 0, 0],
    }
    state = policy.backlog_from_payload(older)
    assert state is not None
    assert (state.withdrawn, state.stamps, state.rated_enqueued) == ((0,) * 6, (0,) * 6, (0,) * 6)
    assert (state.arrival_rates, state.rated_at) == ((0.0,) * 6, 0.0)


@pytest.mark.parametrize("shares", [(1, 1, 1, 1, 1), (1, 1, 1, 1, 1, 1, 1), (2, 1, 1, 1, 1, 0), (1, 1, -1, 1, 1, 1)])
def test_shares_need_six_of_at_least_one(shares: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"^need 6 shares, each at least 1$"):
        policy.validate_shares(shares)


def test_six_shares_of_at_least_one_are_accepted() -> None:
    policy.validate_shares((1, 1, 1, 1, 1, 1))
    policy.validate_shares((32, 16, 8, 4, 2, 1))


def test_the_floor_never_picks_an_empty_level_even_one_with_an_old_stamp() -> None:
    # Level 3 was emptied by a cancel (which moves no stamp): its stamp is old, but it
    # has nothing queued, so it neither owes nor is owed a pick. 20 picks made, F = 8.
    stamps = (20, 20, 20, 2, 20, 19)
    relaxed = Backlog(counts=(1, 0, 0, 0, 0, 1), dequeued=(20, 0, 0, 0, 0, 0), stamps=stamps)
    # Level 5's deadline is 19 + 8 = 27, far off: priority order, level 0.
    assert policy.choose_level(relaxed, "priority", 8) == 0
    # Level 5's deadline is 13 + 8 = 21, the very next pick: the floor takes level 5, not the empty level 3.
    due = Backlog(counts=(1, 0, 0, 0, 0, 1), dequeued=(20, 0, 0, 0, 0, 0), stamps=(20, 20, 20, 2, 20, 13))
    assert policy.choose_level(due, "priority", 8) == 5
