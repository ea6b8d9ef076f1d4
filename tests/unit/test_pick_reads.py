"""A worker whose kept backlog record goes stale between its picks reads it first instead of losing a write."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chalicelib.worker.picking import Picker
from tests.fakes import World, make_world


@dataclass
class Calls:
    reads: int = 0
    lost: int = 0
    won: int = 0


def _counted(w: World) -> Calls:
    """Count the backlog record's reads and the picks' writes, won and lost."""
    calls = Calls()
    read, commit = w.control.backlog, w.control.commit_pick

    def backlog() -> Any:
        calls.reads += 1
        return read()

    def commit_pick(*args: Any, **kwargs: Any) -> Any:
        taken, state = commit(*args, **kwargs)
        if taken:
            calls.won += 1
        else:
            calls.lost += 1
        return taken, state

    w.control.backlog = backlog  # type: ignore[method-assign]
    w.control.commit_pick = commit_pick  # type: ignore[method-assign]
    return calls


def _world(tasks: int) -> World:
    w = make_world(capacity=4)
    for i in range(tasks):
        w.services.submitting.submit(f"user{i}", i)  # every one at level 0
    return w


def test_a_worker_alone_chooses_from_its_kept_record_and_never_reads() -> None:
    w = _world(6)
    calls = _counted(w)
    picker = Picker(w.services.deps)
    state = w.control.backlog()
    calls.reads = 0
    for _ in range(6):
        (picked,), _ = picker.pick(state, full_walk=False)
        state = picked.backlog
    assert (calls.reads, calls.lost, calls.won) == (0, 0, 6)


def test_two_workers_taking_turns_lose_one_write_each_then_read_first_and_win_at_once() -> None:
    w = _world(12)
    calls = _counted(w)
    a, b = Picker(w.services.deps), Picker(w.services.deps)
    state = w.control.backlog()
    kept = {"a": state, "b": state}
    calls.reads = 0
    for _ in range(5):  # a, b, a, b, ...: each one's kept record is a pick behind
        for name, picker in (("a", a), ("b", b)):
            (picked,), _ = picker.pick(kept[name], full_walk=False)
            kept[name] = picked.backlog
    # Without reads every pick after the first loses one write (9 lost). Now: b's first
    # pick (a moved the record) and a's second lose; from then on each reads and wins.
    assert (calls.lost, calls.won) == (2, 10)
    assert calls.reads == 10 - 3  # every pick but a's first two and b's first read first, and wins
    assert w.control.backlog().counts[0] == 2


def test_a_worker_whose_read_finds_its_own_version_goes_back_to_its_kept_record() -> None:
    w = _world(8)
    calls = _counted(w)
    a, b = Picker(w.services.deps), Picker(w.services.deps)
    state = w.control.backlog()
    (picked,), _ = a.pick(state, full_walk=False)
    b.pick(state, full_walk=False)  # b moves the record on (after losing once)
    (picked,), _ = a.pick(picked.backlog, full_walk=False)  # a loses once: it reads first from now on
    assert a.read_first
    calls.reads = calls.lost = 0
    for _ in range(4):  # a alone: one read finds nothing moved, then no more reads
        (picked,), _ = a.pick(picked.backlog, full_walk=False)
    assert (calls.reads, calls.lost) == (1, 0) and not a.read_first
