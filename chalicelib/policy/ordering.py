"""Which level goes next: the priority (with a floor), fair (stride), strict and fifo policies.

Also the backlog record they keep, and the batches a worker picks ahead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from chalicelib.policy.capacity import highest_backlogged
from chalicelib.policy.levels import LEVELS

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
