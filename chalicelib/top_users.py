"""The top-users list: candidates noted by submissions at milestone counts, so /stats reads no table scan.

A submission notes its user on one shared item when the user's count in the
window reaches a milestone (a number with at most two significant bits: 1, 2, 3,
4, 6, 8, 12, 16, 24, ...) above the list's floor. Consecutive milestones are at
most 1.5 times apart, so a user whose count is more than 1.5 times the floor has
been noted; one below may be missing. The item keeps the ``KEPT`` highest noted
counts; /stats reads those users' counters, so the counts it shows are exact.
Pure: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

LISTED = 10  # users /stats lists
KEPT = 2 * LISTED  # candidates the item keeps


@dataclass(frozen=True)
class Candidate:
    user_id: str
    count: int  # the user's count in the window when noted
    noted_at: float


def is_milestone(count: int) -> bool:
    """True for counts with at most two significant bits (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, ...)."""
    if count < 1:
        return False
    shift = max(0, count.bit_length() - 2)
    return (count >> shift) << shift == count


def worth_noting(count: int, floor: int) -> bool:
    """Whether a submission that brought its user to ``count`` writes the list."""
    return count > floor and is_milestone(count)


def _effective(c: Candidate, now: float, window_seconds: int) -> int:
    """A note older than the window says nothing of the count now: it ranks last."""
    return c.count if c.noted_at > now - window_seconds else 0


def ranked(candidates: list[Candidate], now: float, window_seconds: int) -> list[Candidate]:
    return sorted(candidates, key=lambda c: (-_effective(c, now, window_seconds), -c.noted_at, c.user_id))


def floor_of(candidates: list[Candidate], now: float, window_seconds: int, kept: int = KEPT) -> int:
    """The lowest count the list keeps once full; 0 while it has room (every milestone is noted then)."""
    live = [c for c in candidates if _effective(c, now, window_seconds) > 0]
    if len(live) < kept:
        return 0
    return _effective(ranked(live, now, window_seconds)[kept - 1], now, window_seconds)


def overflow(candidates: list[Candidate], now: float, window_seconds: int, kept: int = KEPT) -> list[Candidate]:
    """The candidates beyond the ``kept`` highest: the ones to drop from the item."""
    return ranked(candidates, now, window_seconds)[kept:]
