"""The scheduling policy: pure functions of data and ``now``.

Nothing here reads the clock, the environment or the network, so every rule of
fair allocation is tested exhaustively in milliseconds.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import pairwise
from typing import Any

LEVELS = 6
# Lower bound of the charged count for levels 1..5: 0 -> 0, 1-5 -> 1, 6-15 -> 2,
# 16-25 -> 3, 26-35 -> 4, 36+ -> 5 (the old service's table).
DEFAULT_THRESHOLDS: tuple[int, ...] = (1, 6, 16, 26, 36)


def validate_thresholds(thresholds: Sequence[int]) -> None:
    """Raise ValueError unless there are five strictly increasing bounds >= 1."""
    if len(thresholds) != LEVELS - 1:
        raise ValueError(f"need {LEVELS - 1} lower bounds (levels 1..{LEVELS - 1}), got {len(thresholds)}")
    if thresholds[0] < 1:
        raise ValueError("the bound of level 1 must be at least 1 (a count of 0 is level 0)")
    if any(b <= a for a, b in pairwise(thresholds)):
        raise ValueError("bounds must be strictly increasing")


def charged_count(count_before: int, weight: int) -> int:
    """A user of weight w is charged count // w (the old README's proposal)."""
    if weight < 1:
        raise ValueError("weight must be at least 1")
    return max(count_before, 0) // weight


def level_for(count_before: int, weight: int, thresholds: Sequence[int] = DEFAULT_THRESHOLDS) -> int:
    """The priority level (0 = first) of a submission, from the count before it."""
    charged = charged_count(count_before, weight)
    return sum(1 for bound in thresholds if charged >= bound)


# --- The usage window -----------------------------------------------------
# Submissions are counted in buckets of B = T / N seconds. A bucket that starts at
# s holds the submissions made in [s, s + B) and counts until s + B + T: so every
# submission counts for at least T and at most T + B seconds. The bucket's
# expiry is also its DynamoDB TTL; a bucket whose expiry has passed counts as
# zero whether or not DynamoDB has deleted it yet.


def bucket_start(now: float, bucket_seconds: int) -> int:
    return int(now // bucket_seconds) * bucket_seconds


def bucket_expiry(start: int, bucket_seconds: int, window_seconds: int) -> int:
    return start + bucket_seconds + window_seconds


def is_live(expires_at: float, now: float) -> bool:
    """An item counts only while its expiry is in the future."""
    return expires_at > now


def live_count(buckets: Iterable[tuple[float, int]], now: float) -> int:
    """Sum of (expires_at, count) buckets that are still live at ``now``."""
    return sum(count for expires_at, count in buckets if is_live(expires_at, now))


# --- Capacity -----------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One unit of capacity. It is held only while its lease is live."""

    slot_id: int
    holder: str | None = None
    lease_until: float = 0.0
    # Tasks finished by the workers that held this slot and counted at their release
    # (TALLIES order); /stats adds them to the backlog item's.
    tallies: tuple[int, ...] = (0, 0, 0)

    def is_free(self, now: float) -> bool:
        return self.holder is None or not is_live(self.lease_until, now)


def free_slots(slots: Iterable[Slot], capacity: int, now: float) -> list[int]:
    """Slot ids below ``capacity`` that nobody holds a live lease on.

    A slot that has no record yet is free; slots at or above ``capacity`` (left
    over after capacity was lowered) are never handed out.
    """
    held = {s.slot_id for s in slots if s.slot_id < capacity and not s.is_free(now)}
    return [i for i in range(capacity) if i not in held]


# --- Dispatch ---------------------------------------------------------------


def highest_backlogged(backlog: Sequence[int]) -> int | None:
    """The level a worker takes its next task from: the highest with any queued (strict priority)."""
    for level, count in enumerate(backlog):
        if count > 0:
            return level
    return None


def workers_wanted(free: int, backlog: Sequence[int], full_walk: bool = False) -> int:
    """How many free slots to hand to new workers: one per queued task, at most every free slot.

    The scheduled tick (``full_walk``) starts one even when nothing is counted,
    to find messages the counts missed after a fault.
    """
    queued = sum(max(0, n) for n in backlog)
    if full_walk:
        queued = max(queued, 1)
    return max(0, min(free, queued))


# --- Choosing the next level: priority (with a floor), fair (stride), strict, fifo

POLICIES = ("priority", "fair", "strict", "fifo")
DEFAULT_POLICY = "priority"
# Default shares of the fair policy: each level gets twice the share of the next.
DEFAULT_SHARES: tuple[int, ...] = (32, 16, 8, 4, 2, 1)
# The priority policy's floor F: a level with queued tasks is picked at least once in
# every F consecutive picks. 28, not 32: a task is started after its pick, and a
# level that gets a task after the pick of one held ahead counts from that pick;
# 2 x 28 leaves room for 8 held ahead in the 2-of-every-64-starts target.
DEFAULT_FLOOR_PICKS = 28
# Policies that keep priority order: a batch picked ahead stops short of work a
# higher-priority arrival would have gone before (see plan_picks).
PRIORITY_ORDERED = ("priority", "strict")


@dataclass(frozen=True)
class Backlog:
    """The shared dispatch state: queued counts per level, and the policies' clocks.

    ``passes[L]`` is level L's virtual time and ``vtime`` the virtual time of the
    last pick (the fair policy). ``stamps[L]`` is the pick number (picks_made) at
    which level L was last picked or last seen empty (the priority policy).
    ``version`` changes on every pick (a pick is committed only if no other pick
    came in between and the same levels are empty and non-empty).
    ``arrival_rates[L]`` is level L's recent arrivals per second as of ``rated_at``,
    which counted the tasks submitted up to ``rated_enqueued[L]`` (enqueued less
    withdrawn; for ETAs).
    """

    counts: tuple[int, ...] = (0,) * LEVELS
    passes: tuple[float, ...] = (0.0,) * LEVELS
    vtime: float = 0.0
    version: int = 0
    enqueued: tuple[int, ...] = (0,) * LEVELS  # tasks ever queued per level: a task's sequence number
    dequeued: tuple[int, ...] = (0,) * LEVELS  # tasks ever taken per level
    run_seconds: float = 0.0  # moving average of recent run times (0: none yet)
    # Tasks finished since the start, by outcome (TALLIES order), for the dashboard.
    tallies: tuple[int, ...] = (0,) * 3
    # Numbers given by ``enqueued`` to tasks never queued (a submit rolled back): not submitted.
    withdrawn: tuple[int, ...] = (0,) * LEVELS
    stamps: tuple[int, ...] = (0,) * LEVELS
    arrival_rates: tuple[float, ...] = (0.0,) * LEVELS
    rated_enqueued: tuple[int, ...] = (0,) * LEVELS
    rated_at: float = 0.0


def backlog_to_payload(state: Backlog) -> dict[str, Any]:
    """A Backlog as JSON-able data (for a worker's hand-off)."""
    return {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(state).items()}


def backlog_from_payload(data: dict[str, Any]) -> Backlog | None:
    """The Backlog a payload describes, or None if it does not describe one."""
    try:
        state = Backlog(
            counts=tuple(int(v) for v in data["counts"]),
            passes=tuple(float(v) for v in data["passes"]),
            vtime=float(data["vtime"]),
            version=int(data["version"]),
            enqueued=tuple(int(v) for v in data["enqueued"]),
            dequeued=tuple(int(v) for v in data["dequeued"]),
            run_seconds=float(data["run_seconds"]),
            tallies=tuple(int(v) for v in data["tallies"]),
            # Hand-offs from versions without it carry none.
            withdrawn=tuple(int(v) for v in data.get("withdrawn", (0,) * LEVELS)),
            # Absent from a dispatcher of an older version: the policy's start values.
            stamps=tuple(int(v) for v in data.get("stamps", (0,) * LEVELS)),
            arrival_rates=tuple(float(v) for v in data.get("arrival_rates", (0.0,) * LEVELS)),
            rated_enqueued=tuple(int(v) for v in data.get("rated_enqueued", (0,) * LEVELS)),
            rated_at=float(data.get("rated_at", 0.0)),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    shapes = (
        state.counts,
        state.passes,
        state.enqueued,
        state.dequeued,
        state.stamps,
        state.arrival_rates,
        state.rated_enqueued,
        state.withdrawn,
    )
    if any(len(values) != LEVELS for values in shapes) or len(state.tallies) != len(TALLIES):
        return None
    return state


# The outcomes counted in Backlog.tallies, in order.
TALLIES = ("SUCCESS", "FAILURE", "CANCELLED")


def tally(status: str) -> tuple[int, ...]:
    """A tallies vector counting one task finished with ``status``."""
    return tuple(int(name == status) for name in TALLIES)


def add_tallies(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    return tuple(x + y for x, y in zip(a or (0,) * len(TALLIES), b or (0,) * len(TALLIES), strict=True))


def validate_shares(shares: Sequence[int]) -> None:
    if len(shares) != LEVELS or any(s < 1 for s in shares):
        raise ValueError(f"need {LEVELS} shares, each at least 1")


def queue_level(level: int, policy_name: str) -> int:
    """The queue a task of ``level`` goes to: its own, or one queue for all under fifo."""
    return 0 if policy_name == "fifo" else level


def picks_made(state: Backlog) -> int:
    """The pick number: tasks ever taken (every pick adds one, in the same write)."""
    return sum(state.dequeued)


def floor_allows(state: Backlog, level: int, floor_picks: int = DEFAULT_FLOOR_PICKS) -> bool:
    """Whether taking ``level`` now leaves every other backlogged level time to meet its deadline.

    A level's deadline is its stamp + F: the last pick number it may wait for.
    Picked now, ``level`` takes pick made + 1; the others, earliest deadline
    first, could then take made + 2, made + 3, ...
    """
    made = picks_made(state)
    others = sorted(
        stamp + floor_picks for lvl, stamp in enumerate(state.stamps) if state.counts[lvl] > 0 and lvl != level
    )
    return all(made + 1 + j <= deadline for j, deadline in enumerate(others, start=1))


def choose_level(state: Backlog, policy_name: str, floor_picks: int = DEFAULT_FLOOR_PICKS) -> int | None:
    """The level the next task comes from, or None when nothing is queued.

    strict and fifo: the highest level with a queued task.
    priority: the highest level with a queued task, unless that would leave a
    backlogged level no way to be picked by its deadline (its stamp + F, the
    stamp being the pick number at which it was last picked or seen empty):
    then the earliest deadline goes first (the oldest stamp, ties to the higher
    priority). So priority order is left only when the floor needs it, and as
    late as it can be. Guarantee: every backlogged level is picked by its
    deadline, so within any F consecutive picks throughout which it has queued
    tasks. Proof: the sorted deadlines d1 <= d2 <= ... of the backlogged levels
    always satisfy dj >= made + j (made: picks so far), which is exactly what
    lets each be picked in time. It holds at the start; a level that becomes
    backlogged was stamped at the last pick, so its deadline is made + F, last
    in the order, and there are at most 6 <= F levels; a strict pick is made only
    if it keeps it, by its condition; an earliest-deadline pick removes d1 and
    moves the others one place up as made grows by one; the picked level's new
    deadline made + 1 + F goes last.
    fair: stride scheduling over the backlogged levels. Each backlogged level's
    virtual time is at least the current one (an idle level banks no credit);
    the smallest goes next, ties to the higher priority.
    """
    if policy_name == "priority":
        highest = highest_backlogged(state.counts)
        if highest is None or floor_allows(state, highest, floor_picks):
            return highest
        backlogged = [lvl for lvl, count in enumerate(state.counts) if count > 0]
        return min(backlogged, key=lambda lvl: (state.stamps[lvl], lvl))
    if policy_name != "fair":
        return highest_backlogged(state.counts)
    best: tuple[float, int] | None = None
    for level, count in enumerate(state.counts):
        if count > 0:
            key = (max(state.passes[level], state.vtime), level)
            if best is None or key < best:
                best = key
    return None if best is None else best[1]


def after_pick(state: Backlog, level: int, policy_name: str, shares: Sequence[int] = DEFAULT_SHARES) -> Backlog:
    """The state once a task of ``level`` has been taken.

    Every policy moves the stamps (so a switch to ``priority`` starts from fresh
    ones): the picked level's and every empty level's become the new pick number.
    An idle level banks no credit.
    """
    counts = list(state.counts)
    counts[level] -= 1
    dequeued = list(state.dequeued)
    dequeued[level] += 1
    made = sum(dequeued)
    stamps = tuple(
        made if lvl == level or count <= 0 else stamp
        for lvl, (count, stamp) in enumerate(zip(counts, state.stamps, strict=True))
    )
    taken = replace(state, counts=tuple(counts), dequeued=tuple(dequeued), stamps=stamps, version=state.version + 1)
    if policy_name != "fair":
        return taken
    start = max(state.passes[level], state.vtime)
    passes = list(state.passes)
    passes[level] = start + 1.0 / shares[level]
    return replace(taken, passes=tuple(passes), vtime=start)


def may_hold_ahead(state: Backlog, level: int, policy_name: str, floor_picks: int = DEFAULT_FLOOR_PICKS) -> bool:
    """Whether a pick may wait on a slot behind others of its batch.

    Under a policy that keeps priority order, a task held ahead must not delay a
    higher-priority arrival by more than one task per slot: beyond a batch's
    first task, only level-0 tasks (nothing outranks them) and picks the floor
    forces (an arrival's deadline is later than all others', so it would not
    make them unnecessary) are held.
    """
    if policy_name not in PRIORITY_ORDERED or level == 0:
        return True
    return policy_name == "priority" and level != highest_backlogged(state.counts)


def plan_picks(
    state: Backlog,
    most: int,
    policy_name: str,
    shares: Sequence[int] = DEFAULT_SHARES,
    floor_picks: int = DEFAULT_FLOOR_PICKS,
) -> tuple[list[int], Backlog]:
    """The levels of the next ``most`` tasks, in the order the policy takes them, and the state after.

    The same choices as that many single picks in a row (fewer if fewer are
    queued, or if the next one may not be held ahead: may_hold_ahead).
    """
    levels: list[int] = []
    while len(levels) < most and (level := choose_level(state, policy_name, floor_picks)) is not None:
        if levels and not may_hold_ahead(state, level, policy_name, floor_picks):
            break
        levels.append(level)
        state = after_pick(state, level, policy_name, shares)
    return levels, state


def takes_of(takes: Mapping[int, int]) -> dict[int, int]:
    """A commit's takes, {level: tasks}, checked and without the levels it takes none of."""
    wanted = {lvl: n for lvl, n in takes.items() if n}
    if not wanted or any(not 0 <= lvl < LEVELS or n < 0 for lvl, n in wanted.items()):
        raise ValueError(f"not a pick: {takes!r}")
    return wanted


# SQS returns at most ten messages per receive: a worker holds at most this many picks.
MAX_BATCH = 10


def batch_size(run_seconds: float, ahead_seconds: float, seconds_left: float) -> int:
    """How many tasks a worker picks at once: about ``ahead_seconds`` of work, at least one.

    ``run_seconds`` is the recent average per task (0: not known yet, so one).
    Never more than fit in the worker's ``seconds_left``, nor MAX_BATCH.
    """
    if run_seconds <= 0 or ahead_seconds <= 0:
        return 1
    fits = min(ahead_seconds, max(0.0, seconds_left)) / run_seconds
    return max(1, min(MAX_BATCH, int(fits)))


def batch_share(counts: Sequence[int], capacity: int) -> int:
    """At most this slot's share of what is queued (rounded up), so the last tasks spread over the slots."""
    queued = sum(max(0, n) for n in counts)
    return max(1, -(-queued // max(1, capacity)))


def pick_within_level_many(sample: Sequence[tuple[float, float]], n: int) -> list[int]:
    """Indices of the ``n`` messages to run from a sample, in the order to run them.

    Smallest tag first, then the oldest (see pick_within_level for why).
    """
    return sorted(range(len(sample)), key=lambda i: (sample[i][0], sample[i][1], i))[:n]


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of sorted values, nearest rank; None when empty."""
    if not sorted_values:
        return None
    rank = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[rank]


def moving_average(previous: float, sample: float, weight: float = 0.2) -> float:
    """Recent run times, smoothed; the first sample stands alone."""
    return sample if previous <= 0 else (1 - weight) * previous + weight * sample


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


def guaranteed_share(level: int, backlogged: Iterable[int], shares: Sequence[int] = DEFAULT_SHARES) -> float:
    """The fair policy's floor: a backlogged level's share of the picks among the backlogged levels."""
    levels = set(backlogged) | {level}
    return shares[level] / sum(shares[lvl] for lvl in levels)


def pick_within_level(sample: Sequence[tuple[float, float]]) -> int:
    """Index of the message to run from a sample of one level's (tag, submitted_at).

    A task's tag is its user's charged usage when it was submitted (count before
    / weight). The smallest tag goes first, then the oldest: so one user's long
    run of queued tasks does not hold back a user who has used less, and when
    all are backlogged, users are served in proportion to their weights (as in
    start-time fair queuing).
    """
    return pick_within_level_many(sample, 1)[0]
