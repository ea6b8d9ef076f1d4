"""A queued task's position and its estimated wait (ETA)."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from chalicelib.policy.levels import LEVELS
from chalicelib.policy.ordering import (
    DEFAULT_FLOOR_PICKS,
    DEFAULT_SHARES,
    PRIORITY_ORDERED,
    Backlog,
    after_pick,
    choose_level,
)

# --- Queue position and ETA ---------------------------------------------------

POSITION_LIMIT = 100_000


def queue_position(
    state: Backlog,
    level: int,
    seq: int,
    policy_name: str,
    shares: Sequence[int] = DEFAULT_SHARES,
    floor_picks: int = DEFAULT_FLOOR_PICKS,
) -> int:
    """How many queued tasks the policy will start before a task, if nothing else arrives.

    ``seq`` is the task's sequence number in its level's queue (1 = the first
    ever). Tasks of its level with smaller numbers that are not yet taken are
    ahead of it (approximate: a standard queue is only roughly FIFO, and a level
    is ordered by usage). Other levels' tasks come in between as the policy
    would choose them; this replays the policy on a copy of the state.
    """
    ahead_in_level = _ahead_in_level(state, level, seq)
    counts = list(state.counts)
    counts[level] = max(counts[level], ahead_in_level + 1)
    sim = replace(state, counts=tuple(counts))
    position = 0
    taken_from_level = 0
    while position < POSITION_LIMIT:
        chosen = choose_level(sim, policy_name, floor_picks)
        if chosen is None:
            break
        if chosen == level:
            if taken_from_level == ahead_in_level:
                return position
            taken_from_level += 1
        position += 1
        sim = after_pick(sim, chosen, policy_name, shares)
    return position


def _ahead_in_level(state: Backlog, level: int, seq: int) -> int:
    # Never more ahead than are queued there: the counters can drift (failed
    # submits, duplicates), the count is kept right by the workers.
    return max(0, min(seq - state.dequeued[level] - 1, state.counts[level] - 1))


def floor_bound(state: Backlog, level: int, seq: int, floor_picks: int = DEFAULT_FLOOR_PICKS) -> int:
    """The priority policy's promise: at most this many picks come before a task, whatever arrives.

    Its level stays backlogged until the task is picked, so each of the level's
    picks up to the task's comes within F of the one before.
    """
    return (_ahead_in_level(state, level, seq) + 1) * floor_picks - 1


# Arrival rates are smoothed over about this many seconds (an exponential moving
# average): long enough that a burst, already counted in the position, does not
# read as a lasting load (a 15-s average made ETAs after bursts several times too long).
ARRIVAL_SECONDS = 60.0


def arrival_rates_at(state: Backlog, now: float) -> tuple[float, ...]:
    """Each level's recent arrivals per second at ``now``: the stored rates decayed, plus the arrivals since."""
    if state.rated_at <= 0:
        return state.arrival_rates
    decay = math.exp(-max(0.0, now - state.rated_at) / ARRIVAL_SECONDS)
    return tuple(
        rate * decay + max(0, arrived - rated) / ARRIVAL_SECONDS
        for rate, arrived, rated in zip(state.arrival_rates, _arrived(state), state.rated_enqueued, strict=True)
    )


def _arrived(state: Backlog) -> tuple[int, ...]:
    """Tasks ever submitted per level: the numbers given, less those of submits rolled back."""
    return tuple(e - w for e, w in zip(state.enqueued, state.withdrawn, strict=True))


def with_arrival_rates(state: Backlog, now: float) -> Backlog:
    """The state with its arrival rates brought to ``now`` (a pick's write carries them).

    The first time, the rates start at zero from the arrivals counted so far.
    """
    # Rounded: a rate decayed for hours would fall below the smallest number DynamoDB stores.
    rates = tuple(round(r, 6) for r in arrival_rates_at(state, now)) if state.rated_at > 0 else (0.0,) * LEVELS
    return replace(state, arrival_rates=rates, rated_enqueued=_arrived(state), rated_at=max(now, state.rated_at))


@dataclass(frozen=True)
class Estimate:
    position: int  # queued tasks the policy starts first if nothing else arrives
    eta_seconds: float  # expected wait before the task starts


def slots_free_in(running: Sequence[tuple[float, float]], capacity: int, now: float) -> list[float]:
    """Seconds until each slot is free, soonest first: a running task's expected end, or 0 for an idle slot.

    ``running`` holds each running task's (start time, expected run seconds); a
    task past its expected end is taken to end now.
    """
    busy = sorted(max(0.0, started + expected - now) for started, expected in running)[:capacity]
    return sorted([0.0] * (capacity - len(busy)) + busy)


def start_after(free_in: Sequence[float], ahead: int, run_seconds: float) -> float:
    """When a task starts with ``ahead`` tasks before it: each takes the slot that frees first."""
    slots = list(free_in)
    heapq.heapify(slots)
    for _ in range(ahead):
        heapq.heapreplace(slots, slots[0] + run_seconds)
    return slots[0]


def estimate(
    state: Backlog,
    level: int,
    seq: int,
    now: float,
    *,
    policy_name: str,
    capacity: int,
    run_seconds: float,
    shares: Sequence[int] = DEFAULT_SHARES,
    floor_picks: int = DEFAULT_FLOOR_PICKS,
    running: Sequence[tuple[float, float]] | None = None,
) -> Estimate:
    """A queued task's position and expected wait, from the backlog state and the running tasks.

    The wait is: the slots freeing as their running tasks end (``running``: each
    one's start time and expected run seconds; without it, when more tasks are
    queued than there are slots, every slot is taken to be busy with about
    run / (capacity + 1) left), then the tasks ahead, each on the slot that frees
    first; under a policy that keeps priority order, tasks arriving at higher
    levels meanwhile (their recent rate times that wait, each run ``capacity``
    at a time: a factor 1 + load, load at most 1) go first. The priority policy
    caps it at its floor (floor_bound), whatever arrives.
    """
    position = queue_position(state, level, seq, policy_name, shares, floor_picks)
    per_start = run_seconds / capacity
    if running is None:
        busy = sum(max(0, n) for n in state.counts) > capacity
        free_in = [run_seconds / (capacity + 1) if busy else 0.0] * capacity
        # The tasks ahead at the slots' combined rate (the average, not slot by slot).
        first = free_in[0]
        base = first + position * per_start
    else:
        free_in = slots_free_in(running, capacity, now)
        first = free_in[0]
        base = start_after(free_in, position, run_seconds)
    load = 0.0
    if policy_name in PRIORITY_ORDERED:
        # First order only: the arrivals during the arrivals' own runs would make it
        # 1 / (1 - load), which a recent burst inflates without bound.
        load = min(1.0, sum(arrival_rates_at(state, now)[:level]) * per_start)
    wait = base * (1.0 + load)
    if policy_name == "priority":
        wait = min(wait, first + floor_bound(state, level, seq, floor_picks) * per_start)
    return Estimate(position, wait)
