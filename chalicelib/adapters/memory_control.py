"""In-memory fake of the control store port: the slots and the backlog record."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace

from chalicelib import policy
from chalicelib.policy import Backlog, Slot


class MemoryControlStore:
    """Slots and backlog records; ``shard(k)`` is a view sharing them, acting on shard k's record."""

    def __init__(self) -> None:
        self._slots: dict[int, Slot] = {}
        self._states: dict[int, Backlog] = {}
        self._views: dict[int, MemoryControlStore] = {0: self}
        self._shard = 0
        self._mutex = threading.Lock()

    @property
    def _state(self) -> Backlog:
        return self._states.get(self._shard, Backlog())

    @_state.setter
    def _state(self, value: Backlog) -> None:
        self._states[self._shard] = value

    def shard(self, shard: int) -> MemoryControlStore:
        with self._mutex:
            if shard not in self._views:
                view = object.__new__(MemoryControlStore)
                view._slots, view._states, view._views = self._slots, self._states, self._views
                view._shard, view._mutex = shard, self._mutex
                self._views[shard] = view
            return self._views[shard]

    def slots(self, capacity: int) -> list[Slot]:
        with self._mutex:
            return [self._slots[i] for i in sorted(self._slots) if i < capacity]

    def slots_and_backlog(self, capacity: int) -> tuple[list[Slot], Backlog]:
        return self.slots(capacity), self.backlog()

    def slots_and_backlogs(self, capacity: int, shards: int) -> tuple[list[Slot], list[Backlog]]:
        return self.slots(capacity), self.backlogs(shards)

    def backlogs(self, shards: int) -> list[Backlog]:
        return self.backlogs_of(range(max(1, shards)))

    def backlogs_of(self, shards: Sequence[int]) -> list[Backlog]:
        return [self.shard(k).backlog() for k in shards]

    def claim_slot(self, slot_id: int, holder: str, now: float, lease_until: float) -> bool:
        with self._mutex:
            slot = self._slots.get(slot_id, Slot(slot_id))
            if not slot.is_free(now):
                return False
            self._slots[slot_id] = Slot(slot_id, holder, lease_until, slot.tallies)
            return True

    def take_over_slot(self, slot_id: int, holder: str, new_holder: str, now: float, lease_until: float) -> bool:
        with self._mutex:
            slot = self._slots.get(slot_id)
            if slot is None or slot.holder != holder or not policy.is_live(slot.lease_until, now):
                return False
            self._slots[slot_id] = Slot(slot_id, new_holder, lease_until, slot.tallies)
            return True

    def renew_slot(self, slot_id: int, holder: str, lease_until: float) -> bool:
        with self._mutex:
            slot = self._slots.get(slot_id)
            if slot is None or slot.holder != holder:
                return False
            self._slots[slot_id] = Slot(slot_id, holder, lease_until, slot.tallies)
            return True

    def release_slot(self, slot_id: int, holder: str, tallies: Sequence[int] = ()) -> bool:
        with self._mutex:
            slot = self._slots.get(slot_id)
            if slot is None or slot.holder != holder:
                return False
            self._slots[slot_id] = Slot(slot_id, tallies=policy.add_tallies(slot.tallies, tallies))
            return True

    def backlog(self) -> Backlog:
        with self._mutex:
            return self._clamped()

    def add_backlog(self, level: int, delta: int, tallies: Sequence[int] = ()) -> int:
        with self._mutex:
            counts = list(self._state.counts)
            counts[level] += delta
            self._state = replace(
                self._state, counts=tuple(counts), tallies=policy.add_tallies(self._state.tallies, tallies)
            )
            return counts[level]

    def enqueue(self, level: int, again: bool = False) -> tuple[int, int]:
        with self._mutex:
            counts, enqueued = list(self._state.counts), list(self._state.enqueued)
            withdrawn = list(self._state.withdrawn)
            counts[level] += 1
            enqueued[level] += 1
            withdrawn[level] += int(again)
            self._state = replace(
                self._state, counts=tuple(counts), enqueued=tuple(enqueued), withdrawn=tuple(withdrawn)
            )
            return counts[level], enqueued[level]

    def withdraw(self, level: int) -> None:
        with self._mutex:
            counts, withdrawn = list(self._state.counts), list(self._state.withdrawn)
            counts[level] -= 1
            withdrawn[level] += 1
            self._state = replace(self._state, counts=tuple(counts), withdrawn=tuple(withdrawn))

    def commit_pick(
        self, seen: Backlog, after: Backlog, takes: Mapping[int, int], tallies: Sequence[int] = ()
    ) -> tuple[bool, Backlog]:
        wanted = policy.takes_of(takes)
        with self._mutex:
            current = self._clamped()
            same_shape = all((a > 0) == (b > 0) for a, b in zip(current.counts, seen.counts, strict=True))
            enough = all(current.counts[level] >= n for level, n in wanted.items())
            if current.version != seen.version or not enough or not same_shape:
                return False, current
            counts, dequeued = list(self._state.counts), list(self._state.dequeued)
            for level, n in wanted.items():
                counts[level] -= n
                dequeued[level] += n
            self._state = replace(
                self._state,
                counts=tuple(counts),
                dequeued=tuple(dequeued),
                passes=after.passes,
                vtime=after.vtime,
                stamps=after.stamps,
                arrival_rates=after.arrival_rates,
                rated_enqueued=after.rated_enqueued,
                rated_at=after.rated_at,
                version=self._state.version + 1,
                run_seconds=after.run_seconds if after.run_seconds > 0 else self._state.run_seconds,
                tallies=policy.add_tallies(self._state.tallies, tallies),
            )
            return True, self._clamped()

    def _clamped(self) -> Backlog:
        return replace(self._state, counts=tuple(max(0, n) for n in self._state.counts))
