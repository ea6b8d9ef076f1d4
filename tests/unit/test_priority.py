"""The priority policy: priority order first, and a floor for every backlogged level.

The floor (docs/policy.md): with PQH_FLOOR_PICKS = F, a level that has queued tasks at
every pick of F consecutive picks is picked at least once in them. The expected
values below are written out by hand; the random tests check the stated bound
(a constant) against sequences the policy produced, with the test's own
bookkeeping of which level was backlogged at each pick.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib import policy
from chalicelib.policy import Backlog
from tests.fakes import make_world


def run(state: Backlog, picks: int, floor_picks: int = 28) -> list[int]:
    chosen = []
    for _ in range(picks):
        level = policy.choose_level(state, "priority", floor_picks)
        if level is None:
            break
        chosen.append(level)
        state = policy.after_pick(state, level, "priority")
    return chosen


# --- Worked by hand -------------------------------------------------------------


def test_two_backlogged_levels_level_5_goes_every_28th_pick_with_the_default_floor() -> None:
    # F = 28. Level 5's stamp is 0, its deadline pick 28: level 0 may take picks
    # 1-27 (each leaves level 5 a pick before its deadline), level 5 takes pick 28,
    # and its next deadline is 56: exactly the floor, no departure earlier.
    assert policy.DEFAULT_FLOOR_PICKS == 28
    picks = run(Backlog(counts=(1000, 0, 0, 0, 0, 1000)), 100)
    assert [i + 1 for i, level in enumerate(picks) if level == 5] == [28, 56, 84]


def test_all_levels_backlogged_with_a_floor_of_eight_picks() -> None:
    # F = 8. Every stamp starts at 0: levels 1-5 must be picked by pick 8. Picks
    # 1-3: level 0 (after pick 3 the five others still fit in picks 4-8). Pick 4:
    # level 0 would leave five levels four picks: the earliest deadline goes, ties
    # to the higher priority: 1, then 2, 3, 4, 5. Stamps are then 3 (level 0), 4,
    # 5, 6, 7, 8: deadlines 11-16; level 0 takes picks 9-11 (pick 11 leaves levels
    # 1-5 picks 12-16), and so on: level 0 gets 3 of every 8, each other level 1.
    picks = run(Backlog(counts=(100,) * 6), 20, floor_picks=8)
    assert picks == [0, 0, 0, 1, 2, 3, 4, 5, 0, 0, 0, 1, 2, 3, 4, 5, 0, 0, 0, 1]
    # Level 5 was backlogged at picks 1-7 and picked at 8: the bound F = 8 is reached.


def test_strict_order_while_nothing_is_overdue() -> None:
    # Levels 2 and 4 were picked or empty a few picks ago: nothing is overdue.
    state = Backlog(counts=(0, 0, 3, 0, 2, 0), dequeued=(10, 0, 0, 0, 0, 0), stamps=(10, 10, 8, 10, 9, 10))
    assert run(state, 5) == [2, 2, 2, 4, 4]


def test_a_level_that_was_idle_banks_no_credit() -> None:
    # Level 5 alone for 500 picks, then level 0 becomes backlogged: level 0's stamp
    # moved with every pick while it was empty, so it has no credit, and level 5
    # (picked just now, deadline 528) waits for the next 27 picks.
    state = Backlog(counts=(0, 0, 0, 0, 0, 600))
    for _ in range(500):
        state = policy.after_pick(state, 5, "priority")
    state = replace(state, counts=(100, 0, 0, 0, 0, 100))
    assert run(state, 28) == [0] * 27 + [5]


def test_an_arrival_at_an_empty_level_has_the_latest_deadline() -> None:
    # Levels 0 and 5 backlogged, 20 picks made; level 3 was empty at all of them.
    state = Backlog(counts=(50, 0, 0, 0, 0, 50))
    for _ in range(20):
        state = policy.after_pick(state, 0, "priority")
    assert state.stamps == (20, 20, 20, 20, 20, 0)
    state = replace(state, counts=(30, 0, 0, 1, 0, 50))  # one task arrives at level 3
    # Deadlines: level 5 pick 28, level 3 pick 48. Picks 21-27: level 0 (each leaves
    # levels 5 and 3 a pick each before their deadlines); pick 28: level 5; then level 0.
    assert run(state, 9) == [0] * 7 + [5, 0]


def test_the_oldest_overdue_level_goes_first_ties_to_the_higher_priority() -> None:
    state = Backlog(counts=(9, 9, 9, 9, 9, 9), dequeued=(100, 0, 0, 0, 0, 0), stamps=(100, 60, 50, 50, 90, 40))
    # Ages: 0, 40, 50, 50, 10, 60: levels 1, 2, 3 and 5 are past their deadlines
    # (stamp + 28), so they go first, oldest first.
    # 5 (60) first, then 2 and 3 (50, tie: 2 first), then 1 (40, now 43 old), then level 0.
    assert run(state, 5) == [5, 2, 3, 1, 0]


# --- The floor under random and exhaustive arrivals ------------------------------


def longest_gaps(floor_picks: int, seed: int, picks: int = 400) -> dict[int, int]:
    """Play random arrivals; per level, the most consecutive picks it was backlogged at and not picked."""
    rng = random.Random(seed)
    state = Backlog(counts=tuple(rng.randrange(0, 4) for _ in range(policy.LEVELS)))
    waiting = [0] * policy.LEVELS  # picks in a row at which the level had tasks and was not picked
    longest = [0] * policy.LEVELS
    for _ in range(picks):
        counts = list(state.counts)
        for _ in range(rng.choice((0, 0, 1, 2, 3))):  # 0-3 arrivals, at levels weighted towards 0
            counts[min(rng.randrange(8), policy.LEVELS - 1) if rng.random() < 0.5 else rng.randrange(6)] += 1
        state = replace(state, counts=tuple(counts))
        backlogged = [n > 0 for n in state.counts]
        level = policy.choose_level(state, "priority", floor_picks)
        if level is None:
            waiting = [0] * policy.LEVELS
            continue
        for lvl in range(policy.LEVELS):
            if lvl == level or not backlogged[lvl]:
                waiting[lvl] = 0
            else:
                waiting[lvl] += 1
                longest[lvl] = max(longest[lvl], waiting[lvl])
        state = policy.after_pick(state, level, "priority")
    return dict(enumerate(longest))


@pytest.mark.parametrize("floor_picks", [6, 8, 13, 32])
def test_a_backlogged_level_is_never_passed_over_for_f_picks_in_a_row(floor_picks: int) -> None:
    # Passed over at most F - 1 picks in a row: so picked in every F consecutive picks.
    bound = {6: 5, 8: 7, 13: 12, 32: 31}[floor_picks]
    worst = 0
    for seed in range(60):
        worst = max(worst, *longest_gaps(floor_picks, seed).values())
    assert worst <= bound


def test_with_the_default_floor_every_backlogged_level_gets_2_of_every_64_picks() -> None:
    rng = random.Random(11)
    state = Backlog(counts=(5, 5, 5, 5, 5, 5))
    history: list[tuple[int, tuple[bool, ...]]] = []
    for _ in range(3000):
        counts = list(state.counts)
        counts[0] += rng.random() < 0.9  # level 0 keeps coming: the lower levels depend on the floor
        counts[rng.randrange(1, policy.LEVELS)] += rng.random() < 0.2
        state = replace(state, counts=tuple(counts))
        level = policy.choose_level(state, "priority")
        assert level is not None
        history.append((level, tuple(n > 0 for n in state.counts)))
        state = policy.after_pick(state, level, "priority")
    checked = 0
    for start in range(len(history) - 64):
        window = history[start : start + 64]
        for lvl in range(policy.LEVELS):
            if all(backlogged[lvl] for _, backlogged in window):
                checked += 1
                assert sum(1 for level, _ in window if level == lvl) >= 2
    assert checked > 1000  # the lower levels were backlogged through many windows


def test_every_start_of_ages_keeps_the_floor_exhaustively() -> None:
    # F = 8 (K = 3): every level backlogged, every combination of starting ages 0-3
    # (4^6 = 4096 states): no level waits 8 picks in a row.
    for start in itertools.product(range(4), repeat=policy.LEVELS):
        state = Backlog(counts=(50,) * 6, dequeued=(3, 0, 0, 0, 0, 0), stamps=tuple(3 - age for age in start))
        picks = run(state, 30, floor_picks=8)
        for lvl in range(policy.LEVELS):
            taken_at = [-1, *(i for i, level in enumerate(picks) if level == lvl), len(picks)]
            assert max(b - a - 1 for a, b in itertools.pairwise(taken_at)) <= 7, (start, lvl, picks)


def test_departures_from_priority_order_are_only_the_ones_the_floor_forces() -> None:
    # Under random arrivals, a pick that is not the highest backlogged level is of the
    # oldest level, and one that had waited at least F - 5 = 23 picks (the test's own
    # count of picks since it was last picked or seen empty): with at most 5 levels
    # due before it, a younger level's deadline leaves room for a strict pick.
    rng = random.Random(5)
    state = Backlog()
    since = [0] * policy.LEVELS
    departures = 0
    in_a_row = longest_run = 0
    for _ in range(4000):
        counts = list(state.counts)
        counts[rng.randrange(policy.LEVELS)] += rng.random() < 0.7
        counts[0] += rng.random() < 0.4
        state = replace(state, counts=tuple(counts))
        level = policy.choose_level(state, "priority")
        if level is None:
            continue
        highest = next(lvl for lvl, n in enumerate(state.counts) if n > 0)
        in_a_row = in_a_row + 1 if level != highest else 0
        longest_run = max(longest_run, in_a_row)
        # Taking the highest level now would leave the j-th oldest other level (age a)
        # j more picks: too late once a + 1 + j > 28. A departure happens exactly then.
        others = sorted(since[lvl] for lvl in range(policy.LEVELS) if state.counts[lvl] > 0 and lvl != highest)
        needed = any(age + 1 + j > 28 for j, age in enumerate(reversed(others), start=1))
        assert (level != highest) == needed
        if level != highest:
            departures += 1
            assert since[level] >= 23
            assert all(since[level] >= since[lvl] for lvl in range(policy.LEVELS) if state.counts[lvl] > 0)
        state = policy.after_pick(state, level, "priority")
        since = [0 if lvl == level or state.counts[lvl] <= 0 else since[lvl] + 1 for lvl in range(policy.LEVELS)]
    assert departures > 20  # the floor did act
    # The highest backlogged level is passed over at most 5 picks in a row (once per lower level).
    assert 2 <= longest_run <= 5


# --- Batches picked ahead ------------------------------------------------------


def test_a_batch_stops_short_of_lower_priority_work() -> None:
    # Priority order: beyond its first task a batch holds only level-0 tasks and
    # the floor's forced picks; a higher-priority arrival waits at most one task.
    assert policy.plan_picks(Backlog(counts=(1, 0, 0, 3, 0, 0)), 5, "priority")[0] == [0]
    assert policy.plan_picks(Backlog(counts=(0, 0, 0, 3, 0, 0)), 5, "priority")[0] == [3]
    assert policy.plan_picks(Backlog(counts=(7, 0, 0, 3, 0, 0)), 5, "priority")[0] == [0, 0, 0, 0, 0]
    assert policy.plan_picks(Backlog(counts=(1, 0, 0, 3, 0, 0)), 5, "strict")[0] == [0]
    assert policy.plan_picks(Backlog(counts=(0, 2, 0, 3, 0, 0)), 5, "strict")[0] == [1]
    # 25 picks made, level 5 last stamped at 0 (its deadline is pick 28): the third
    # pick of the batch is the floor's, so it is held; so are the level-0 ones.
    state = Backlog(counts=(10, 0, 0, 0, 0, 5), dequeued=(25, 0, 0, 0, 0, 0), stamps=(25, 25, 25, 25, 25, 0))
    assert policy.plan_picks(state, 5, "priority")[0] == [0, 0, 5, 0, 0]
    # The fair policy and fifo batch as before (fair's order is by shares anyway).
    assert policy.plan_picks(Backlog(counts=(1, 0, 0, 3, 0, 0)), 4, "fair")[0] == [0, 3, 3, 3]


def test_a_task_held_ahead_delays_a_higher_priority_arrival_by_at_most_one_task() -> None:
    w = make_world(capacity=1, prefetch_seconds=1.0, policy="priority")
    for i in range(16):  # one user's tasks: levels 0, 1 x5, 2 x10
        w.services.submitting.submit("heavy", i)
    order: list[str] = []
    light: dict[str, object] = {}

    def task(x: object, ctx: object) -> str:
        order.append(ctx.user_id)
        w.clock.advance(0.1)  # an average of 0.1 s: a second of work is ten tasks
        if len(order) == 8:  # a level-1 or -2 task runs; a new user's level-0 task arrives
            light["at"] = len(order)
            w.services.submitting.submit("light", "x")
        return "done"

    w.services.deps.task_function = task
    w.services.dispatching.dispatch()
    w.run_workers()
    started_before = order.index("light") - light["at"]  # type: ignore[operator]
    # At most the one task picked ahead on the slot (the next is picked while a task runs).
    assert started_before <= 1
    assert len(order) == 17


# --- Position and ETA under the priority policy -----------------------------------


def test_positions_replay_the_floor() -> None:
    # F = 8, nine tasks at level 0 and two at level 5, nothing picked yet. Picks by
    # hand: level 0 for picks 1-7, level 5 at its deadline (pick 8), level 0 for
    # picks 9 and 10 (its last two), then level 5.
    state = Backlog(counts=(9, 0, 0, 0, 0, 2), enqueued=(9, 0, 0, 0, 0, 2))
    positions = [policy.queue_position(state, 0, seq, "priority", floor_picks=8) for seq in range(1, 10)]
    assert positions == [0, 1, 2, 3, 4, 5, 6, 8, 9]
    assert [policy.queue_position(state, 5, seq, "priority", floor_picks=8) for seq in (1, 2)] == [7, 10]
    assert [policy.queue_position(state, 5, seq, "strict") for seq in (1, 2)] == [9, 10]


def test_the_eta_counts_the_running_task_and_the_arrivals_that_go_first() -> None:
    # Two tasks queued at level 2, this one second; 2-s tasks on one slot. More are
    # queued than there are slots, so the slot is busy: its task has about
    # 2 / (1 + 1) = 1 s left. Then the one ahead runs (2 s). Level 0 gets a task
    # every 4 s (0.25/s): during those 3 s, 0.75 tasks arrive that go first, 2 s
    # each: the wait is (1 + 2) x (1 + 0.25 x 2) = 4.5 s.
    state = Backlog(
        counts=(0, 0, 2, 0, 0, 0),
        enqueued=(9, 0, 2, 0, 0, 0),
        arrival_rates=(0.25, 0.0, 0.0, 0.0, 0.0, 0.0),
        rated_enqueued=(9, 0, 2, 0, 0, 0),
        rated_at=500.0,
    )
    found = policy.estimate(state, 2, 2, 500.0, policy_name="strict", capacity=1, run_seconds=2.0)
    assert (found.position, found.eta_seconds) == (1, 4.5)
    # Under fifo nothing overtakes: the first task waits for the busy slot alone (1 s).
    found = policy.estimate(state, 2, 1, 500.0, policy_name="fifo", capacity=1, run_seconds=2.0)
    assert (found.position, found.eta_seconds) == (0, 1.0)
    # Alone in the queue: no slot is assumed busy, nothing ahead.
    alone = replace(state, counts=(0, 0, 1, 0, 0, 0))
    assert policy.estimate(alone, 2, 2, 500.0, policy_name="strict", capacity=1, run_seconds=2.0).eta_seconds == 0.0


def test_the_priority_policy_caps_the_eta_at_its_floor() -> None:
    # One task at level 5 behind 100 at level 0 that keep coming (10/s, 1-s tasks: the
    # load is capped at 1). F = 28: position 27 (picked at its deadline, 28th); the
    # wait from the load would be (0.5 + 27) x 2 = 55 s, but the floor promises at
    # most 27 picks before it, whatever arrives: 0.5 + 27 x 1 = 27.5 s.
    state = Backlog(
        counts=(100, 0, 0, 0, 0, 1),
        enqueued=(100, 0, 0, 0, 0, 1),
        arrival_rates=(10.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        rated_enqueued=(100, 0, 0, 0, 0, 1),
        rated_at=50.0,
    )
    found = policy.estimate(state, 5, 1, 50.0, policy_name="priority", capacity=1, run_seconds=1.0)
    assert (found.position, found.eta_seconds) == (27, 27.5)


def test_arrival_rates_decay_and_count_the_arrivals_since() -> None:
    # 60 s (ARRIVAL_SECONDS) x ln 2 later the stored rate has halved; the three
    # arrivals since add 3 / 60 = 0.05 per second.
    state = Backlog(
        enqueued=(13, 0, 0, 0, 0, 0),
        arrival_rates=(1.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        rated_enqueued=(10, 0, 0, 0, 0, 0),
        rated_at=100.0,
    )
    rates = policy.arrival_rates_at(state, 100.0 + 60.0 * 0.6931471805599453)
    assert rates[0] == pytest.approx(0.5 + 0.05) and rates[1:] == (0.0,) * 5
    # A pick's write carries them, counted up to the arrivals it saw.
    after = policy.with_arrival_rates(state, 110.0)
    assert (after.rated_at, after.rated_enqueued) == (110.0, (13, 0, 0, 0, 0, 0))
    # A submit rolled back (its number withdrawn) is no arrival: 2 since, not 3.
    withdrawn = replace(state, withdrawn=(1, 0, 0, 0, 0, 0))
    assert policy.arrival_rates_at(withdrawn, 100.0)[0] == pytest.approx(1.0 + 2 / 60)
    assert policy.with_arrival_rates(withdrawn, 110.0).rated_enqueued == (12, 0, 0, 0, 0, 0)
    # The first time there is nothing to measure from: zero, from now on.
    first = policy.with_arrival_rates(replace(state, rated_at=0.0, arrival_rates=(0.0,) * 6), 7.0)
    assert (first.arrival_rates, first.rated_enqueued, first.rated_at) == ((0.0,) * 6, (13, 0, 0, 0, 0, 0), 7.0)


# --- Random arrivals, drawn by hypothesis: the floor and the order, exactly ---------

# Each pick is preceded by 0-3 arrivals, at any levels.
ARRIVALS = st.lists(st.lists(st.integers(0, policy.LEVELS - 1), max_size=3), min_size=1, max_size=200)


def play(floor_picks: int, arrivals: list[list[int]]) -> list[tuple[int, int, list[int]]]:
    """Pick after each round of arrivals: (level picked, highest backlogged, each level's picks waited)."""
    state = Backlog()
    since = [0] * policy.LEVELS  # the test's own count: picks since last picked or seen empty
    played = []
    for arrived in arrivals:
        counts = list(state.counts)
        for level in arrived:
            counts[level] += 1
        state = replace(state, counts=tuple(counts))
        level = policy.choose_level(state, "priority", floor_picks)
        if level is None:
            continue
        highest = next(lvl for lvl, n in enumerate(state.counts) if n > 0)
        waited = [since[lvl] if state.counts[lvl] > 0 else -1 for lvl in range(policy.LEVELS)]
        played.append((level, highest, waited))
        state = policy.after_pick(state, level, "priority")
        since = [0 if lvl == level or state.counts[lvl] <= 0 else since[lvl] + 1 for lvl in range(policy.LEVELS)]
    return played


@settings(max_examples=300, deadline=None)
@given(floor_picks=st.sampled_from([6, 7, 8, 12, 28]), arrivals=ARRIVALS)
def test_under_any_arrivals_a_backlogged_level_is_picked_within_every_f_picks(
    floor_picks: int, arrivals: list[list[int]]
) -> None:
    # A level with tasks at a pick had waited at most F - 1 picks before it: if it
    # is not picked now, it has waited at most F - 2 (so it still has a pick to go).
    for level, _, waited in play(floor_picks, arrivals):
        for lvl, w in enumerate(waited):
            assert w <= floor_picks - 1
            assert lvl == level or w <= floor_picks - 2


@settings(max_examples=300, deadline=None)
@given(floor_picks=st.sampled_from([6, 7, 8, 12, 28]), arrivals=ARRIVALS)
def test_under_any_arrivals_priority_order_is_left_only_when_the_floor_forces_it(
    floor_picks: int, arrivals: list[list[int]]
) -> None:
    # Taking the highest level now would leave the j-th longest-waiting other level
    # (waited w) j more picks: too late once w + 1 + j > F. Then, and only then, the
    # longest-waiting level goes instead (ties to the higher priority).
    for level, highest, waited in play(floor_picks, arrivals):
        others = sorted((w for lvl, w in enumerate(waited) if w >= 0 and lvl != highest), reverse=True)
        forced = any(w + 1 + j > floor_picks for j, w in enumerate(others, start=1))
        if not forced:
            assert level == highest
        else:
            longest = max(w for w in waited if w >= 0)
            assert waited[level] == longest
            assert level == min(lvl for lvl, w in enumerate(waited) if w == longest)


def test_three_starved_levels_take_the_last_three_picks_before_their_deadline() -> None:
    # Level 1 always has tasks; levels 3, 4 and 5 are backlogged from the start (stamps
    # 0: each must be picked by pick 28). With m picks made, level 1 may take pick
    # m + 1 only if the three still fit after it, m + 1 + 3 <= 28: picks 1-25 are level
    # 1's, picks 26-28 go to 3, 4, 5 (oldest first, ties to the higher priority). Their
    # stamps become 26-28, their deadlines 54-56: level 1 takes 29-53, then 3, 4, 5.
    # Three departures per 28 picks, each as late as the floor allows.
    picks = run(Backlog(counts=(0, 1000, 0, 50, 50, 50)), 60)
    departures = [(i + 1, level) for i, level in enumerate(picks) if level != 1]
    assert departures == [(26, 3), (27, 4), (28, 5), (54, 3), (55, 4), (56, 5)]
