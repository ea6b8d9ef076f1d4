"""Backlog shards: the backlog record split into independent records, each with its own slots.

With ``PQH_BACKLOG_SHARDS`` = N > 1, a task is counted (and numbered) in shard
``shard_of(task_id, N)``. Before each pick a worker reads its own shard (slot s:
shard s mod N, at first) and one other, each other one in turn (one batch read),
and picks from the other only if its most urgent queued level is more urgent;
when both are empty it reads them all and takes the most urgent.
Each shard is a whole backlog record (counts, sequence numbers, the policy's state,
its version), so the policy runs exactly inside each shard and picks race only
with the picks of their own shard. Across shards the order is approximate (see
docs/policy.md). With N = 1 (the default) there is one record and nothing changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

from chalicelib.policy.capacity import highest_backlogged
from chalicelib.policy.levels import LEVELS
from chalicelib.policy.ordering import Backlog, add_tallies

MAX_SHARDS = 100


def shard_of(task_id: str, shards: int) -> int:
    """The shard a task is counted in: a stable hash of its id (so any function can find it again)."""
    if shards <= 1:
        return 0
    digest = hashlib.sha256(task_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def home_shard(slot_id: int, shards: int) -> int:
    """The shard a slot's worker picks from first."""
    return slot_id % shards if shards > 1 else 0


def visiting_order(home: int, shards: int) -> list[int]:
    """Every shard, a worker's own first, then the next ones in turn."""
    return [(home + i) % shards for i in range(max(1, shards))]


def other_shard(own: int, turn: int, shards: int) -> int:
    """The other shard a worker compares its own with at its ``turn``-th pick.

    Shard ``turn mod N``, or the next one when that is its own: so over any N
    picks every shard is either looked at or the worker's own, wherever it moved.
    """
    candidate = turn % shards
    return (candidate + 1) % shards if candidate == own else candidate


def shard_to_pick(states: Sequence[Backlog], home: int) -> int | None:
    """The shard a worker picks from: the one whose most urgent queued level is the most urgent.

    Ties go to the worker's own shard, then to the next ones in turn, so while every
    shard has work at the same level each worker stays on its own. Inside the shard
    the policy chooses as usual (its floor counts that shard's picks). None when no
    shard has a task counted.
    """
    best: tuple[int, int] | None = None
    chosen: int | None = None
    for rank, shard in enumerate(visiting_order(home, len(states))):
        top = highest_backlogged(states[shard].counts)
        if top is not None and (best is None or (top, rank) < best):
            best, chosen = (top, rank), shard
    return chosen


def combined(states: Sequence[Backlog]) -> Backlog:
    """The shards' records as one, for what is reported (counts, totals, arrival rates, run time).

    Counters are summed; the run time is the mean of the shards that have one. The
    policies' clocks and the version are the first shard's: never pick from this.
    """
    if not states:
        return Backlog()
    if len(states) == 1:
        return states[0]

    def total(name: str) -> tuple[int, ...]:
        return tuple(sum(getattr(s, name)[lvl] for s in states) for lvl in range(LEVELS))

    tallies: tuple[int, ...] = ()
    for state in states:
        tallies = add_tallies(tallies, state.tallies)
    runs = [s.run_seconds for s in states if s.run_seconds > 0]
    return replace(
        states[0],
        counts=total("counts"),
        enqueued=total("enqueued"),
        dequeued=total("dequeued"),
        withdrawn=total("withdrawn"),
        rated_enqueued=total("rated_enqueued"),
        arrival_rates=tuple(sum(s.arrival_rates[lvl] for s in states) for lvl in range(LEVELS)),
        rated_at=max(s.rated_at for s in states),
        tallies=tallies,
        run_seconds=sum(runs) / len(runs) if runs else 0.0,
    )
