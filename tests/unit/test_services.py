"""Services against in-memory fakes: submit, dispatch, run, and their invariants."""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor

import pytest

from chalicelib.domain import FAILURE, PENDING, STARTED, SUCCESS, NotFoundError
from chalicelib.policy import LEVELS
from chalicelib.ports import ALREADY_FINISHED, RUNNING_ELSEWHERE
from chalicelib.services import DISPATCH_LOCK_SECONDS
from tests.fakes import make_world


def test_submit_counts_picks_level_stores_queues_and_nudges() -> None:
    w = make_world()
    levels = [w.services.submit("alice", i).priority_level for i in range(7)]
    assert levels == [0, 1, 1, 1, 1, 1, 2]
    assert [w.queues.depth(level) for level in range(LEVELS)] == [1, 5, 1, 0, 0, 0]
    assert w.control.backlog() == [1, 5, 1, 0, 0, 0]
    assert w.invoker.dispatch_triggers == 7
    assert all(t.task_status == PENDING for t in w.tasks.all())


def test_users_are_counted_separately_whatever_their_ids() -> None:
    w = make_world()
    for _ in range(10):
        w.services.submit("celery", 1)
    assert w.services.submit("celery", 1).priority_level == 2
    for other in ("_kombu.binding.celery", "celery ", "CELERY", "unacked"):
        assert w.services.submit(other, 1).priority_level == 0


def test_old_submissions_leave_the_window() -> None:
    w = make_world(window_seconds=600, window_buckets=10)
    for _ in range(6):
        w.services.submit("bob", 0)
    assert w.services.user_usage("bob")["count_in_window"] == 6
    w.clock.advance(600 + 60)  # T + B: every bucket has expired
    assert w.services.user_usage("bob")["count_in_window"] == 0
    assert w.services.submit("bob", 0).priority_level == 0


def test_window_slides_bucket_by_bucket() -> None:
    w = make_world(window_seconds=600, window_buckets=10)
    w.clock.now = 60_000.0  # start of a bucket
    w.services.submit("carol", 0)
    w.clock.advance(300)
    w.services.submit("carol", 0)
    w.clock.advance(360)  # 660 s after the first: its bucket has expired, not the second
    assert w.services.user_usage("carol")["count_in_window"] == 1


def test_weight_divides_the_count() -> None:
    w = make_world()
    w.services.set_weight("vip", 6)
    levels = [w.services.submit("vip", i).priority_level for i in range(13)]
    assert levels == [0] * 6 + [1] * 6 + [1]
    assert w.services.user_usage("vip")["weight"] == 6


def test_concurrent_submissions_get_exactly_the_threshold_distribution() -> None:
    w = make_world()
    with ThreadPoolExecutor(max_workers=16) as pool:
        levels = list(pool.map(lambda i: w.services.submit("burst", i).priority_level, range(100)))
    counts = collections.Counter(levels)
    assert [counts[level] for level in range(LEVELS)] == [1, 5, 10, 10, 10, 64]


def test_dispatch_respects_priority_and_capacity() -> None:
    w = make_world(capacity=1)
    for _ in range(7):
        w.services.submit("heavy", "h")  # levels 0,1,1,1,1,1,2
    w.services.submit("light", "l")  # level 0
    order = []
    while True:
        report = w.services.dispatch()
        handoffs = w.invoker.take_handoffs()
        assert len(handoffs) <= 1  # capacity 1: never two at once
        if not handoffs:
            break
        order.append(handoffs[0].level)
        w.services.run(handoffs[0])
        assert report.started == 1
    assert order == [0, 0, 1, 1, 1, 1, 1, 2]
    assert all(t.task_status == SUCCESS for t in w.tasks.all())


def test_dispatch_fills_every_free_slot_and_no_more() -> None:
    w = make_world(capacity=3)
    for i in range(10):
        w.services.submit(f"user{i}", i)
    assert w.services.dispatch().started == 3
    assert w.services.dispatch().started == 0  # all slots held
    held = [s for s in w.control.slots(3) if not s.is_free(w.clock.now)]
    assert len(held) == 3
    w.services.run(w.invoker.take_handoffs()[0])
    assert w.services.dispatch().started == 1


def test_a_false_empty_short_poll_does_not_skip_a_higher_level() -> None:
    w = make_world(capacity=1, flaky_short_poll=True)
    for _ in range(3):
        w.services.submit("heavy", 0)  # levels 0, 1, 1
    w.services.dispatch()
    w.run_all()
    w.services.submit("light", 0)  # level 0, now behind heavy's level-1 tasks in time
    w.services.dispatch()
    (handoff,) = w.invoker.take_handoffs()
    assert handoff.level == 0
    assert handoff.task_id == next(t.task_id for t in w.tasks.all() if t.user_id == "light")


def test_a_dead_worker_frees_its_slot_when_the_lease_runs_out_and_the_task_runs_again() -> None:
    w = make_world(capacity=1, lease_seconds=100)
    task = w.services.submit("u", "x")
    w.services.dispatch()
    (lost,) = w.invoker.take_handoffs()  # the worker Lambda never ran (or died)
    w.services.submit("u", "y")
    assert w.services.dispatch().started == 0  # the slot is still leased
    w.clock.advance(101)
    assert w.services.dispatch(full_walk=True).started == 1  # slot free again; "y" goes
    w.run_all()
    w.clock.advance(400)  # past the queue's visibility timeout: "x" is visible again
    assert w.services.dispatch(full_walk=True).started == 1
    assert w.run_all() == [SUCCESS]
    assert w.tasks.get(task.task_id).task_status == SUCCESS  # type: ignore[union-attr]
    assert w.ran.count(task.task_id) == 1
    assert lost.task_id == task.task_id


def test_a_crashed_run_is_retried_after_its_lease() -> None:
    w = make_world(capacity=1, lease_seconds=100)
    task = w.services.submit("u", "x")
    w.services.dispatch()
    (first,) = w.invoker.take_handoffs()
    # The first run marks STARTED, then its process dies: simulate by starting by hand.
    w.tasks.start(task.task_id, "dead-run", w.clock.now, w.clock.now + 100)
    w.clock.advance(400)
    w.services.dispatch(full_walk=True)
    assert w.run_all() == [SUCCESS]
    final = w.tasks.get(task.task_id)
    assert final is not None and final.task_status == SUCCESS and final.attempts == 2
    assert first.task_id == task.task_id


def test_a_task_delivered_twice_runs_once_and_keeps_its_result() -> None:
    w = make_world(capacity=2)
    task = w.services.submit("u", "x")
    w.services.dispatch()
    (handoff,) = w.invoker.take_handoffs()
    assert w.services.run(handoff) == SUCCESS
    first = w.tasks.get(task.task_id)
    w.clock.advance(5)
    assert w.services.run(handoff) == ALREADY_FINISHED
    assert w.ran == [task.task_id]
    assert w.tasks.get(task.task_id) == first
    assert all(s.is_free(w.clock.now) for s in w.control.slots(2))


def test_a_second_delivery_while_running_does_not_run_it_again() -> None:
    w = make_world(capacity=2)
    task = w.services.submit("u", "x")
    w.tasks.start(task.task_id, "other-run", w.clock.now, w.clock.now + 300)
    w.services.dispatch()
    (handoff,) = w.invoker.take_handoffs()
    assert w.services.run(handoff) == RUNNING_ELSEWHERE
    assert w.ran == []
    assert w.tasks.get(task.task_id).task_status == STARTED  # type: ignore[union-attr]
    assert all(s.is_free(w.clock.now) for s in w.control.slots(2))  # our slot went back


def test_a_failing_task_is_marked_failure_with_the_reason() -> None:
    w = make_world()

    def boom(x: object, ctx: object) -> None:
        raise ValueError("bad input")

    w.services.task_function = boom
    task = w.services.submit("u", "x")
    w.services.dispatch()
    assert w.run_all() == [FAILURE]
    final = w.tasks.get(task.task_id)
    assert final is not None and final.error == "ValueError: bad input" and final.finished_at is not None
    assert w.queues.depth(0) == 0  # finished: its message is gone


def test_a_result_that_is_not_json_is_a_failure_not_a_crash() -> None:
    w = make_world()
    w.services.task_function = lambda x, ctx: {1, 2}
    w.services.submit("u", "x")
    w.services.dispatch()
    assert w.run_all() == [FAILURE]


def test_finishing_a_task_nudges_the_dispatcher_and_frees_the_slot() -> None:
    w = make_world(capacity=1)
    w.services.submit("u", 1)
    w.services.dispatch()
    before = w.invoker.dispatch_triggers
    w.run_all()
    assert w.invoker.dispatch_triggers == before + 1
    assert w.control.slots(1)[0].is_free(w.clock.now)


def test_a_failed_hand_off_keeps_the_task_queued_and_the_slot_free() -> None:
    w = make_world(capacity=1)
    task = w.services.submit("u", 1)
    w.invoker.fail_next_start = RuntimeError("lambda is down")
    assert w.services.dispatch().started == 0
    assert w.control.slots(1)[0].is_free(w.clock.now)
    assert w.queues.depth(0) == 1
    assert w.services.dispatch(full_walk=True).started == 1
    w.run_all()
    assert w.tasks.get(task.task_id).task_status == SUCCESS  # type: ignore[union-attr]


def test_a_queue_failure_at_submit_leaves_no_orphan_record() -> None:
    w = make_world()

    def down(level: int, task: object) -> None:
        raise RuntimeError("sqs is down")

    w.queues.send = down  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        w.services.submit("u", 1)
    assert w.tasks.all() == []
    assert w.control.backlog() == [0] * LEVELS


def test_a_held_dispatch_lock_turns_a_trigger_into_a_rerun_request() -> None:
    w = make_world(capacity=1)
    w.services.submit("u", 1)
    assert w.control.acquire_dispatch_lock("someone", w.clock.now, w.clock.now + 60)
    report = w.services.dispatch()
    assert report.locked_out and report.started == 0
    # The holder must run once more before it may release.
    assert w.control.release_dispatch_lock("someone") is False
    assert w.control.release_dispatch_lock("someone") is True
    assert w.services.dispatch().started == 1


def test_a_dead_dispatchers_lock_expires() -> None:
    w = make_world(capacity=1)
    w.services.submit("u", 1)
    w.control.acquire_dispatch_lock("dead", w.clock.now, w.clock.now + DISPATCH_LOCK_SECONDS)
    assert w.services.dispatch().locked_out
    w.clock.advance(DISPATCH_LOCK_SECONDS + 1)
    assert w.services.dispatch().started == 1


def test_result_of_unknown_or_malformed_or_expired_ids_is_not_found() -> None:
    w = make_world(result_ttl_seconds=60)
    with pytest.raises(NotFoundError):
        w.services.result("00000000-0000-0000-0000-000000000000")
    with pytest.raises(NotFoundError):
        w.services.result("../../etc")
    task = w.services.submit("u", 1)
    assert w.services.result(task.task_id).task_id == task.task_id
    w.clock.advance(61)
    with pytest.raises(NotFoundError):
        w.services.result(task.task_id)
