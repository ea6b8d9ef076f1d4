"""Priority levels from a user's recent submissions, and the usage window that counts them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import pairwise

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
