"""Capacity slots and how many workers the dispatcher starts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from chalicelib.policy.levels import is_live

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
