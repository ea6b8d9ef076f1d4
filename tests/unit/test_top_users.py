"""The top-users list: which submissions note their user, and who /stats lists."""

from __future__ import annotations

import itertools
from typing import Any

from chalicelib import top_users
from chalicelib.top_users import Candidate
from tests.fakes import make_world


def test_milestones_have_at_most_two_significant_bits_and_are_at_most_one_and_a_half_apart() -> None:
    milestones = [n for n in range(1, 5000) if top_users.is_milestone(n)]
    assert milestones[:12] == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    assert all(b <= 1.5 * a for a, b in itertools.pairwise(milestones[1:]))
    assert not top_users.is_milestone(0)


def test_a_full_list_has_the_floor_of_its_lowest_live_note_and_drops_beyond_what_it_keeps() -> None:
    notes = [Candidate(f"u{n}", n + 1, 100.0) for n in range(5)]
    assert top_users.floor_of(notes, 101.0, 600, kept=6) == 0  # room left
    assert top_users.floor_of(notes, 101.0, 600, kept=5) == 1
    assert top_users.floor_of(notes, 101.0, 600, kept=4) == 2
    assert [c.user_id for c in top_users.overflow(notes, 101.0, 600, kept=4)] == ["u0"]
    # Notes older than the window rank last and do not hold the floor up.
    assert top_users.floor_of(notes, 701.0, 600, kept=5) == 0
    fresh = Candidate("new", 1, 700.0)
    assert top_users.overflow([*notes, fresh], 701.0, 600, kept=5)[0].user_id != "new"


class CountingUsage:
    """Wraps the memory usage store and counts its top-users writes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.notes: list[tuple[str, int]] = []

    def note_top_user(self, user_id: str, count: int, now: float, window_seconds: int) -> int:
        self.notes.append((user_id, count))
        return int(self.inner.note_top_user(user_id, count, now, window_seconds))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_submissions_note_their_user_only_at_milestones_above_the_floor() -> None:
    w = make_world()
    usage = CountingUsage(w.usage)
    w.services.deps.usage = usage  # type: ignore[assignment]
    for _ in range(13):
        w.services.submitting.submit("heavy", 1)
    assert usage.notes == [("heavy", n) for n in (1, 2, 3, 4, 6, 8, 12)]  # 7 writes for 13 submissions
    # Fill the list with KEPT users of two submissions each: its floor becomes 2.
    for n in range(top_users.KEPT):
        for _ in range(2):
            w.services.submitting.submit(f"user-{n:02d}", 1)
    usage.notes.clear()
    w.services.submitting.submit("light", 1)  # count 1: below the floor, no write
    w.services.submitting.submit("light", 1)  # count 2: not above it
    w.services.submitting.submit("light", 1)  # count 3: noted
    assert usage.notes == [("light", 3)]
    listed = [u["user_id"] for u in w.stats()["users"]]
    assert listed[:2] == ["heavy", "light"] and len(listed) == top_users.LISTED


def test_a_note_that_fails_does_not_fail_the_submission() -> None:
    w = make_world()

    def refuse(*args: Any) -> int:
        raise RuntimeError("DynamoDB is unavailable")

    w.usage.note_top_user = refuse  # type: ignore[method-assign]
    assert w.services.submitting.submit("u", 1).task_status == "PENDING"
    assert w.stats()["users"] == []
