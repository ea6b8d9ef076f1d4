"""What a worker records for each task it takes: its outcome, where its message goes, what is counted."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from chalicelib.deps import RECORD_GRACE_SECONDS
from chalicelib.domain import CANCELLED, FAILURE, PENDING, SUCCESS, NotFoundError
from chalicelib.policy import LEVELS
from chalicelib.ports import ALREADY_FINISHED, LEASE_LOST, MISSING, RUNNING_ELSEWHERE
from chalicelib.settings import TASK_RUN_LEASE_SECONDS
from chalicelib.tasks import TaskContext, cancellable
from chalicelib.worker.executing import RECORD_WAIT_SECONDS
from tests.fakes import make_world

WAIT = 10.0  # a generous bound for another thread's step on a loaded machine


def test_the_worker_runs_the_task_function_the_settings_name() -> None:
    w = make_world(capacity=1, task_function="chalicelib.tasks.always_fails")
    w.services.deps.task_function = None  # loaded from PQH_TASK_FUNCTION on first use
    task = w.services.submitting.submit("u", 1)
    w.services.dispatching.dispatch()
    assert w.outcomes() == [FAILURE]
    record = w.tasks.get(task.task_id)
    assert record is not None and record.error == f"RuntimeError: task {task.task_id} always fails"


def test_a_task_function_is_told_its_task_its_user_and_the_configured_seconds() -> None:
    w = make_world(capacity=1, task_seconds=2.5)
    seen: list[tuple[str, str, float]] = []

    def task(x: Any, ctx: TaskContext) -> None:
        seen.append((ctx.task_id, ctx.user_id, ctx.task_seconds))

    w.services.deps.task_function = task
    submitted = w.services.submitting.submit("alice", 1)
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS]
    assert seen == [(submitted.task_id, "alice", 2.5)]


def test_a_result_of_exactly_128_kib_is_kept_and_one_byte_more_fails() -> None:
    w = make_world(capacity=1)
    w.services.deps.task_function = lambda x, ctx: "a" * x  # JSON adds two quotes
    fits = w.services.submitting.submit("u", 128 * 1024 - 2)
    too_big = w.services.submitting.submit("v", 128 * 1024 - 1)
    w.services.dispatching.dispatch()
    assert sorted(w.outcomes()) == [FAILURE, SUCCESS]
    assert w.tasks.get(fits.task_id).result == "a" * (128 * 1024 - 2)  # type: ignore[union-attr]
    assert w.tasks.get(too_big.task_id).error == "result is 131073 bytes; the limit is 131072"  # type: ignore[union-attr]


def test_a_result_nested_exactly_to_the_limit_is_kept() -> None:
    w = make_world(capacity=1)

    def nested(depth: int, ctx: Any) -> Any:
        value: Any = 0
        for _ in range(depth):
            value = [value]
        return value

    w.services.deps.task_function = nested
    fits = w.services.submitting.submit("u", 65)
    too_deep = w.services.submitting.submit("v", 66)
    w.services.dispatching.dispatch()
    assert sorted(w.outcomes()) == [FAILURE, SUCCESS]
    assert w.tasks.get(fits.task_id).task_status == SUCCESS  # type: ignore[union-attr]
    assert w.tasks.get(too_deep.task_id).error == "result nests 66 levels deep; the limit is 65"  # type: ignore[union-attr]


def test_while_a_worker_runs_its_slot_is_not_free_for_the_dispatcher() -> None:
    w = make_world(capacity=1)
    started: list[int] = []

    def task(x: Any, ctx: Any) -> None:
        if x == "first":
            w.services.submitting.submit("v", "second")
            started.append(w.services.dispatching.dispatch().workers_started)

    w.services.deps.task_function = task
    w.services.submitting.submit("u", "first")
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS, SUCCESS]  # the running worker takes the second too
    assert started == [0]


def test_a_worker_stops_taking_tasks_when_its_time_is_up_to_the_second() -> None:
    w = make_world(capacity=1, runner_seconds=10.0)

    def five_seconds(x: Any, ctx: Any) -> None:
        w.clock.advance(5)

    w.services.deps.task_function = five_seconds
    tasks = [w.services.submitting.submit(f"u{i}", i) for i in range(3)]
    w.services.dispatching.dispatch()
    (report,) = w.run_workers()
    assert report.outcomes == [SUCCESS, SUCCESS] and report.stopped_because == "time up"
    assert w.tasks.get(tasks[2].task_id).task_status == PENDING  # type: ignore[union-attr]
    assert w.services.dispatching.dispatch().workers_started == 1


def test_the_totals_count_a_finished_task_while_its_worker_still_runs() -> None:
    w = make_world(capacity=1)
    succeeded: list[int] = []

    def task(x: Any, ctx: Any) -> None:
        succeeded.append(w.stats()["tasks"]["succeeded"])

    w.services.deps.task_function = task
    for i in range(3):
        w.services.submitting.submit(f"u{i}", i)
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS] * 3
    assert succeeded == [0, 1, 2]  # each pick carries the tasks finished before it
    assert w.stats()["tasks"]["succeeded"] == 3


def test_a_refused_slot_release_counts_the_task_and_no_phantom_queued_task() -> None:
    w = make_world(capacity=1)
    w.services.submitting.submit("u", 1)
    w.services.dispatching.dispatch()
    w.control.release_slot = lambda *args, **kwargs: False  # type: ignore[method-assign]
    assert w.outcomes() == [SUCCESS]
    assert w.stats()["tasks"]["succeeded"] == 1
    assert w.control.backlog().counts == (0,) * LEVELS


def test_a_message_whose_record_has_expired_is_dropped_not_run_nor_dead_lettered() -> None:
    w = make_world(capacity=1)
    task = w.services.submitting.submit("u", 1)
    w.tasks.delete(task.task_id)  # TTL removed the record
    w.clock.advance(RECORD_GRACE_SECONDS)
    w.services.dispatching.dispatch()
    assert w.outcomes() == [MISSING]
    assert w.ran == [] and w.queues.depth(0) == 0 and w.queues.dead[0] == []


def test_a_message_received_before_its_record_lands_is_given_back_and_runs_once_it_has() -> None:
    # A submit writes the record while it sends the message: a worker can be faster.
    w = make_world(capacity=1)
    task = w.services.submitting.submit("u", 1)
    record = w.tasks.get(task.task_id)
    assert record is not None
    w.tasks.delete(task.task_id)  # not landed yet
    w.services.dispatching.dispatch()
    assert w.outcomes() == [MISSING]
    assert w.ran == [] and w.queues.depth(0) == 1 and w.queues.dead[0] == []
    w.tasks.create(record)  # it lands
    w.services.dispatching.dispatch(full_walk=True)
    assert w.outcomes() == []  # hidden for a moment: no busy loop on a record that is late
    w.clock.advance(RECORD_WAIT_SECONDS)
    w.services.dispatching.dispatch(full_walk=True)
    assert w.outcomes() == [SUCCESS] and w.ran == [task.task_id]


def test_a_record_that_lands_a_moment_after_its_message_was_received_runs_at_once() -> None:
    w = make_world(capacity=1)
    task = w.services.submitting.submit("u", 1)
    record = w.tasks.get(task.task_id)
    assert record is not None
    w.tasks.delete(task.task_id)
    start = w.tasks.start

    def start_then_land(*args: Any, **kwargs: Any) -> Any:
        answer = start(*args, **kwargs)
        if answer[0] == MISSING:
            w.tasks.create(record)  # lands while the worker pauses
        return answer

    w.tasks.start = start_then_land  # type: ignore[method-assign]
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS] and w.ran == [task.task_id]
    assert w.queues.depth(0) == 0 and w.control.backlog().counts == (0,) * LEVELS


def test_a_second_delivery_of_a_finished_task_is_dropped_not_dead_lettered() -> None:
    w = make_world(capacity=1)
    task = w.services.submitting.submit("u", 1)
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS]
    w.queues.send(0, task)  # SQS delivers it again
    w.services.dispatching.dispatch(full_walk=True)
    assert w.outcomes() == [ALREADY_FINISHED]
    assert w.queues.depth(0) == 0 and w.queues.dead[0] == []
    assert w.tasks.get(task.task_id).task_status == SUCCESS  # type: ignore[union-attr]


def test_a_redelivered_task_gives_back_the_count_it_took_from_another_so_that_one_runs_too() -> None:
    w = make_world(capacity=1, policy="strict")
    a = w.services.submitting.submit("a", "a")
    ((_, message, _, _, _),) = w.pick(None, False)  # a worker takes a's count and message
    w.tasks.start(a.task_id, "dead-run", w.clock.now, w.clock.now + TASK_RUN_LEASE_SECONDS)  # and dies
    b = w.services.submitting.submit("b", "b")  # counted: the only count of level 0 now
    w.clock.advance(w.queues.visibility_timeout + 1)  # a's message is visible again, uncounted
    counted: list[int] = []

    def task(x: Any, ctx: Any) -> None:
        counted.append(w.control.backlog().counts[0])

    w.services.deps.task_function = task
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS, SUCCESS]
    assert counted == [1, 0]  # while a ran, b was still counted
    assert [w.tasks.get(t.task_id).attempts for t in (a, b)] == [2, 1]  # type: ignore[union-attr]
    assert message.task_id == a.task_id


def test_a_task_whose_worker_died_twice_still_runs_on_its_third_delivery() -> None:
    w = make_world(capacity=1)
    task = w.services.submitting.submit("u", "x")
    for attempt in range(2):
        w.pick(None, full_walk=True)
        w.tasks.start(task.task_id, f"dead-run-{attempt}", w.clock.now, w.clock.now + TASK_RUN_LEASE_SECONDS)
        w.clock.advance(w.queues.visibility_timeout + 1)
    w.services.dispatching.dispatch(full_walk=True)
    assert w.outcomes() == [SUCCESS]
    final = w.tasks.get(task.task_id)
    assert final is not None and (final.task_status, final.attempts) == (SUCCESS, 3)


def test_a_task_given_up_after_its_worker_died_three_times_says_when_and_is_kept_for_the_result_ttl() -> None:
    w = make_world(capacity=1, result_ttl_seconds=600)
    task = w.services.submitting.submit("u", "x")
    for attempt in range(3):
        w.pick(None, full_walk=True)
        w.tasks.start(task.task_id, f"dead-run-{attempt}", w.clock.now, w.clock.now + TASK_RUN_LEASE_SECONDS)
        w.clock.advance(w.queues.visibility_timeout + 1)
    w.services.dispatching.dispatch(full_walk=True)
    given_up_at = w.clock.now
    assert w.outcomes() == [FAILURE]
    final = w.services.results.result(task.task_id)
    assert (final.finished_at, final.expires_at) == (given_up_at, int(given_up_at) + 600)
    w.clock.advance(599)
    assert w.services.results.result(task.task_id).task_status == FAILURE
    w.clock.advance(2)
    with pytest.raises(NotFoundError):
        w.services.results.result(task.task_id)


def test_a_failed_task_dead_lettered_on_redelivery_carries_its_error() -> None:
    w = make_world(capacity=1)

    def poison(x: object, ctx: object) -> None:
        raise ValueError("poison")

    w.services.deps.task_function = poison
    w.services.submitting.submit("u", 1)
    w.services.dispatching.dispatch()
    send_dead = w.queues.send_dead

    def lost(*args: object) -> None:
        raise SystemExit("killed after recording the outcome")

    w.queues.send_dead = lost  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        w.run_workers()
    w.queues.send_dead = send_dead  # type: ignore[method-assign]
    w.clock.advance(TASK_RUN_LEASE_SECONDS + 60)  # the message comes back
    w.services.dispatching.dispatch(full_walk=True)
    assert w.outcomes() == [ALREADY_FINISHED]
    [shown] = w.services.operations.dead_letters(0).messages
    assert shown.reason == "ValueError: poison"
    [dead] = w.queues.receive_dead(0, 10, hide_seconds=0)
    assert dead.reason == "ValueError: poison"


def test_a_task_answered_cancelled_while_it_ran_says_when_it_ended() -> None:
    w = make_world(capacity=1)

    @cancellable
    def quick(x: Any, ctx: TaskContext) -> str:
        w.services.results.cancel(ctx.task_id)  # asked while running; never reads the flag
        w.clock.advance(7)
        return "done"

    w.services.deps.task_function = quick
    task = w.services.submitting.submit("u", 1)
    w.services.dispatching.dispatch()
    started_at = w.clock.now
    assert w.outcomes() == [CANCELLED]
    record = w.tasks.get(task.task_id)
    assert record is not None and (record.task_status, record.finished_at) == (CANCELLED, started_at + 7)


def test_a_second_delivery_within_the_run_lease_is_left_alone() -> None:
    w = make_world(capacity=2, lease_seconds=3600)
    nested: list[list[str]] = []

    def task(x: Any, ctx: Any) -> None:
        if nested:
            return  # the second run of the task (a failure of the lease)
        w.clock.advance(TASK_RUN_LEASE_SECONDS - 1)  # a long run: its lease has a second left
        w.queues.send(0, submitted)  # SQS delivers the message again meanwhile
        w.services.dispatching.dispatch(full_walk=True)
        nested.append(w.outcomes())

    w.services.deps.task_function = task
    submitted = w.services.submitting.submit("u", 1)
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS]
    assert nested == [[RUNNING_ELSEWHERE]]
    assert w.tasks.get(submitted.task_id).attempts == 1  # type: ignore[union-attr]


def test_finished_messages_are_deleted_ten_at_a_time_as_soon_as_ten_are_finished() -> None:
    w = make_world(capacity=1)
    depths: list[int] = []

    def task(x: Any, ctx: Any) -> None:
        depths.append(w.queues.depth(0))

    w.services.deps.task_function = task
    for i in range(25):
        w.services.submitting.submit(f"user{i}", i)
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS] * 25
    assert depths == [25] * 10 + [15] * 10 + [5] * 5
    assert w.queues.depth(0) == 0


def test_finished_messages_wait_at_most_thirty_seconds_to_be_deleted() -> None:
    w = make_world(capacity=1)
    depths: list[int] = []

    def ten_seconds(x: Any, ctx: Any) -> None:
        depths.append(w.queues.depth(0))
        w.clock.advance(10)

    w.services.deps.task_function = ten_seconds
    for i in range(6):
        w.services.submitting.submit(f"user{i}", i)
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS] * 6
    # The first finished 10 s in; 30 s later (after the fourth) the four finished go.
    assert depths == [6, 6, 6, 6, 2, 2]
    assert w.queues.depth(0) == 0


def test_a_run_that_outlived_its_lease_does_not_overwrite_the_run_that_took_over() -> None:
    w = make_world(capacity=2, lease_seconds=3600)
    a_started, b_started = threading.Event(), threading.Event()

    def task(x: Any, ctx: Any) -> str:
        if not a_started.is_set():  # the first run: slow, past its run lease
            a_started.set()
            b_started.wait(WAIT)
            return "from the first run"
        b_started.set()  # the second run, on the redelivered message
        first_worker.join(WAIT)  # the first run tries to record its outcome meanwhile
        return "from the second run"

    w.services.deps.task_function = task
    submitted = w.services.submitting.submit("u", 1)
    w.services.dispatching.dispatch()
    (handoff,) = w.invoker.take_handoffs()
    reports: list[Any] = []
    first_worker = threading.Thread(target=lambda: reports.append(w.services.worker.run(handoff)))
    first_worker.start()
    assert a_started.wait(WAIT)
    w.clock.advance(TASK_RUN_LEASE_SECONDS + 1)  # the first run's lease is over
    w.queues.send(0, submitted)  # SQS delivers the message again
    w.services.dispatching.dispatch(full_walk=True)
    assert w.outcomes() == [SUCCESS]  # the second run records its outcome
    first_worker.join(WAIT)
    assert [r.outcomes for r in reports] == [[LEASE_LOST]]  # the first run's outcome is dropped
    record = w.tasks.get(submitted.task_id)
    assert record is not None and (record.result, record.attempts) == ("from the second run", 2)
