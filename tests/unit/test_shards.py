"""Backlog shards (PQH_BACKLOG_SHARDS): each task counted in one shard's record, workers picking their own
shard first and the others when theirs is empty, every count taken back from the shard it was taken from."""

from __future__ import annotations

import pytest

from chalicelib import policy
from chalicelib.domain import CANCELLED, SUCCESS
from chalicelib.policy import LEVELS, Backlog
from tests.fakes import World, make_world

SHARDS = 4


def _counts(w: World, shards: int = SHARDS) -> list[tuple[int, ...]]:
    return [b.counts for b in w.control.backlogs(shards)]


def test_a_task_id_always_maps_to_the_same_shard_and_ids_spread_over_all() -> None:
    ids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(400)]
    first = [policy.shard_of(task_id, SHARDS) for task_id in ids]
    assert first == [policy.shard_of(task_id, SHARDS) for task_id in ids]
    spread = [first.count(k) for k in range(SHARDS)]
    assert all(60 <= n <= 140 for n in spread), spread  # about 100 each
    assert {policy.shard_of(task_id, 1) for task_id in ids} == {0}


def test_combined_sums_the_counters_and_averages_the_run_time() -> None:
    a = Backlog(counts=(1, 2, 0, 0, 0, 0), enqueued=(5, 2, 0, 0, 0, 0), tallies=(1, 0, 0), run_seconds=2.0)
    b = Backlog(counts=(0, 1, 0, 0, 0, 3), enqueued=(1, 1, 0, 0, 0, 3), tallies=(0, 2, 1), run_seconds=0.0)
    c = Backlog(counts=(2, 0, 0, 0, 0, 0), enqueued=(2, 0, 0, 0, 0, 0), withdrawn=(1, 0, 0, 0, 0, 0), run_seconds=4.0)
    both = policy.combined([a, b, c])
    assert both.counts == (3, 3, 0, 0, 0, 3)
    assert both.enqueued == (8, 3, 0, 0, 0, 3)
    assert both.withdrawn == (1, 0, 0, 0, 0, 0)
    assert both.tallies == (1, 2, 1)
    assert both.run_seconds == 3.0  # the mean of the shards that have one
    assert policy.combined([a]) is a


def test_submits_are_counted_in_the_shard_their_id_names_and_spread_over_the_shards() -> None:
    w = make_world(capacity=4, backlog_shards=SHARDS)
    tasks = [w.services.submitting.submit(f"user{i}", i) for i in range(40)]
    per_shard = [sum(b.counts) for b in w.control.backlogs(SHARDS)]
    assert sum(per_shard) == 40 and sum(1 for n in per_shard if n) >= 3
    # Each task's number is its place in its own shard's level: 1, 2, 3 ... per shard.
    by_shard: dict[int, list[int]] = {}
    for task in tasks:
        by_shard.setdefault(policy.shard_of(task.task_id, SHARDS), []).append(task.queue_seq)
    assert {k: sorted(seqs) for k, seqs in by_shard.items()} == {
        k: list(range(1, len(seqs) + 1)) for k, seqs in by_shard.items()
    }
    assert w.stats()["tasks"]["submitted"] == 40 and w.stats()["tasks"]["queued"] == 40


def test_every_task_runs_once_and_every_shard_ends_empty() -> None:
    w = make_world(capacity=3, backlog_shards=SHARDS, policy="strict")
    tasks = [w.services.submitting.submit(f"user{i % 7}", i) for i in range(30)]
    w.services.dispatching.dispatch()
    outcomes = [o for _ in range(5) for o in w.outcomes()]
    assert sorted(w.ran) == sorted(t.task_id for t in tasks) and outcomes.count(SUCCESS) == 30
    assert _counts(w) == [(0,) * LEVELS] * SHARDS
    assert w.queues.depth(0) + w.queues.depth(1) + w.queues.depth(2) == 0


def test_a_worker_whose_own_shard_is_empty_picks_from_the_others() -> None:
    # One slot: its worker's own shard is 0; tasks counted in shards 1-3 run only if it looks there.
    w = make_world(capacity=1, backlog_shards=SHARDS)
    tasks = [w.services.submitting.submit(f"user{i}", i) for i in range(12)]
    elsewhere = [sum(b.counts) for b in w.control.backlogs(SHARDS)][1:]
    assert sum(elsewhere) > 0
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS] * 12
    assert sorted(w.ran) == sorted(t.task_id for t in tasks)
    assert _counts(w) == [(0,) * LEVELS] * SHARDS


def test_a_worker_picks_its_own_shard_first() -> None:
    w = make_world(capacity=4, backlog_shards=SHARDS, policy="strict")
    for i in range(40):
        w.services.submitting.submit(f"user{i}", i)
    before = _counts(w)
    picker = w.services.worker.picker()
    picker.shard = 2
    (picked,) = picker.pick(None, False)[0]
    assert picked.shard == 2
    after = _counts(w)
    assert [sum(a) - sum(b) for a, b in zip(before, after, strict=True)] == [0, 0, 1, 0]


def test_a_failed_send_withdraws_from_the_tasks_shard() -> None:
    w = make_world(capacity=4, backlog_shards=SHARDS)

    def down(level: int, task: object) -> None:
        raise RuntimeError("sqs is down")

    w.queues.send = down  # type: ignore[method-assign]
    for i in range(8):
        with pytest.raises(RuntimeError):
            w.services.submitting.submit(f"user{i}", i)
    shards = w.control.backlogs(SHARDS)
    assert [b.counts for b in shards] == [(0,) * LEVELS] * SHARDS
    assert sum(sum(b.withdrawn) for b in shards) == 8 and w.stats()["tasks"]["submitted"] == 0


def test_a_cancelled_task_takes_its_count_from_its_shard() -> None:
    w = make_world(capacity=4, backlog_shards=SHARDS)
    tasks = [w.services.submitting.submit(f"user{i}", i) for i in range(8)]
    for task in tasks:
        assert w.services.results.cancel(task.task_id).task_status == CANCELLED
    assert _counts(w) == [(0,) * LEVELS] * SHARDS
    assert w.stats()["tasks"]["cancelled"] == 8


def test_a_put_back_task_gets_its_count_back_in_the_shard_it_was_taken_from() -> None:
    w = make_world(capacity=4, backlog_shards=SHARDS)
    for i in range(20):
        w.services.submitting.submit(f"user{i}", i)
    before = _counts(w)
    picker = w.services.worker.picker()
    picker.shard = 3
    picks, _ = picker.pick(None, False)
    assert [p.shard for p in picks] == [3]
    picker.put_back(picks)
    assert _counts(w) == before


def test_a_queued_tasks_position_counts_the_other_shards_alike() -> None:
    # Strict order, one level: within its shard, k tasks before it; each other shard
    # starts about as many meanwhile: position k * shards.
    w = make_world(capacity=2, backlog_shards=2, policy="strict")
    tasks = [w.services.submitting.submit(f"user{i}", i) for i in range(10)]
    for n, task in enumerate(tasks):
        shard = policy.shard_of(task.task_id, 2)
        ahead = sum(1 for t in tasks[:n] if policy.shard_of(t.task_id, 2) == shard)
        progress = w.services.results.progress(w.services.results.result(task.task_id))
        assert progress is not None and progress.queue_position == 2 * ahead


def test_the_shard_to_pick_is_the_one_with_the_most_urgent_work_and_the_own_one_on_a_tie() -> None:
    def queued(*levels: int) -> Backlog:
        return Backlog(counts=tuple(int(lvl in levels) for lvl in range(LEVELS)))

    states = [queued(3), queued(1, 5), queued(), queued(1)]
    assert policy.shard_to_pick(states, 0) == 1  # level 1 beats 3; shard 1 comes before 3 from 0
    assert policy.shard_to_pick(states, 3) == 3  # its own on a tie
    assert policy.shard_to_pick(states, 2) == 3  # the next in turn on a tie
    assert policy.shard_to_pick([queued(), queued()], 1) is None


def test_a_more_urgent_task_in_another_shard_is_taken_within_n_picks() -> None:
    w = make_world(capacity=4, backlog_shards=SHARDS, policy="strict")
    for i in range(30):
        w.services.submitting.submit("heavy", i)  # one level 0, then levels 1, 2, 3
    heavy_first = [b.counts[0] for b in w.control.backlogs(SHARDS)].index(1)
    light = w.services.submitting.submit("light", "urgent")  # level 0
    elsewhere = policy.shard_of(light.task_id, SHARDS)
    mine = next(k for k in range(SHARDS) if k not in (heavy_first, elsewhere))
    picker = w.services.worker.picker()
    picker.shard, picker._turn = mine, 0
    picks = [picker.pick(None, False)[0][0] for _ in range(SHARDS)]  # every shard looked at, or its own
    urgent = [p for p in picks if p.queue == 0]
    assert urgent and all(p.shard != mine for p in urgent)


def test_the_other_shard_compared_comes_in_turn() -> None:
    assert [policy.other_shard(1, turn, 4) for turn in range(6)] == [0, 2, 2, 3, 0, 2]
