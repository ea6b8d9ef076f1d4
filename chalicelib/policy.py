"""The scheduling policy: pure functions of data and ``now``.

Nothing here reads the clock, the environment or the network, so every rule of
fair allocation is tested exhaustively in milliseconds.
"""

from __future__ import annotations

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


# --- Choosing the next level: strict, fair (stride), fifo ---------------------

POLICIES = ("fair", "strict", "fifo")
# Default shares of the fair policy: each level gets twice the share of the next.
DEFAULT_SHARES: tuple[int, ...] = (32, 16, 8, 4, 2, 1)


@dataclass(frozen=True)
class Backlog:
    """The shared dispatch state: queued counts per level, and the fair policy's clock.

    ``passes[L]`` is level L's virtual time, ``vtime`` the virtual time of the last
    pick, ``version`` changes on every pick (a pick is committed only if no other
    pick came in between and the same levels are empty and non-empty).
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
        )
    except (KeyError, TypeError, ValueError):
        return None
    shapes = (state.counts, state.passes, state.enqueued, state.dequeued)
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


def choose_level(state: Backlog, policy_name: str) -> int | None:
    """The level the next task comes from, or None when nothing is queued.

    strict and fifo: the highest level with a queued task.
    fair: stride scheduling over the backlogged levels. Each backlogged level's
    virtual time is at least the current one (an idle level banks no credit);
    the smallest goes next, ties to the higher priority.
    """
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
    """The state once a task of ``level`` has been taken."""
    counts = list(state.counts)
    counts[level] -= 1
    dequeued = list(state.dequeued)
    dequeued[level] += 1
    taken = replace(state, counts=tuple(counts), dequeued=tuple(dequeued), version=state.version + 1)
    if policy_name != "fair":
        return taken
    start = max(state.passes[level], state.vtime)
    passes = list(state.passes)
    passes[level] = start + 1.0 / shares[level]
    return replace(taken, passes=tuple(passes), vtime=start)


def plan_picks(
    state: Backlog, most: int, policy_name: str, shares: Sequence[int] = DEFAULT_SHARES
) -> tuple[list[int], Backlog]:
    """The levels of the next ``most`` tasks, in the order the policy takes them, and the state after.

    The same choices as ``most`` single picks in a row (fewer if fewer are queued).
    """
    levels: list[int] = []
    while len(levels) < most and (level := choose_level(state, policy_name)) is not None:
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
    state: Backlog, level: int, seq: int, policy_name: str, shares: Sequence[int] = DEFAULT_SHARES
) -> int:
    """How many queued tasks the policy will start before a task, if nothing else arrives.

    ``seq`` is the task's sequence number in its level's queue (1 = the first
    ever). Tasks of its level with smaller numbers that are not yet taken are
    ahead of it (approximate: a standard queue is only roughly FIFO, and the fair
    policy orders a level by usage). Other levels' tasks come in between as the
    policy would choose them; this replays the policy on a copy of the state.
    """
    # Never more ahead than are queued there: the counters can drift (failed
    # submits, duplicates), the count is kept right by the workers.
    ahead_in_level = max(0, min(seq - state.dequeued[level] - 1, state.counts[level] - 1))
    counts = list(state.counts)
    counts[level] = max(counts[level], ahead_in_level + 1)
    sim = replace(state, counts=tuple(counts))
    position = 0
    taken_from_level = 0
    while position < POSITION_LIMIT:
        chosen = choose_level(sim, policy_name)
        if chosen is None:
            break
        if chosen == level:
            if taken_from_level == ahead_in_level:
                return position
            taken_from_level += 1
        position += 1
        sim = after_pick(sim, chosen, policy_name, shares)
    return position


def eta_seconds(position: int, capacity: int, run_seconds: float) -> float:
    """Expected wait before a task starts: the tasks ahead, run ``capacity`` at a time."""
    return position * run_seconds / capacity


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
