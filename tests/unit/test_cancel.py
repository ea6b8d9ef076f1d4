"""Cancellation: queued tasks never run; running ones stop if their function can; races are safe."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from chalicelib.domain import CANCELLED, PENDING, STARTED, SUCCESS, ConflictError, Identity, NotFoundError
from chalicelib.policy import LEVELS
from chalicelib.tasks import TaskCancelledError, TaskContext, cancellable
from tests.fakes import ManualTimers, make_world

LEVEL_COUNTS = [0, 1, 6, 16, 26, 36]  # submissions before one that lands at each level


@pytest.mark.parametrize("level", range(LEVELS))
def test_a_task_cancelled_while_queued_at_any_level_never_runs(level: int) -> None:
    w = make_world(capacity=1, policy="strict")
    for i in range(LEVEL_COUNTS[level]):
        w.services.submitting.submit("u", f"before{i}")
    task = w.services.submitting.submit("u", "target")
    assert task.priority_level == level
    usage_before = w.services.accounts.user_usage("u").count_in_window
    counts_before = w.control.backlog().counts
    cancelled = w.services.results.cancel(task.task_id)
    assert cancelled.task_status == CANCELLED and cancelled.finished_at is not None
    # It no longer counts against the user's window, nor as queued.
    assert w.services.accounts.user_usage("u").count_in_window == usage_before - 1
    assert w.control.backlog().counts[level] == counts_before[level] - 1
    w.services.dispatching.dispatch()
    w.run_workers()
    assert task.task_id not in w.ran
    assert w.tasks.get(task.task_id).task_status == CANCELLED  # type: ignore[union-attr]
    assert all(t.task_status == SUCCESS for t in w.tasks.all() if t.task_id != task.task_id)
    # Its message is deleted by the next worker that meets it, or by the tick's walk.
    w.services.dispatching.dispatch(full_walk=True)
    w.run_workers()
    assert all(w.queues.depth(lvl) == 0 for lvl in range(LEVELS))
    assert task.task_id not in w.ran


def test_cancelling_a_running_task_stops_a_function_that_supports_it() -> None:
    w = make_world(capacity=1)
    asked: list[Any] = []

    @cancellable
    def long_task(x: Any, ctx: TaskContext) -> None:
        asked.append(w.services.results.cancel(task.task_id))  # a DELETE while it runs
        while not ctx.cancelled():
            w.timers.advance(0.25)  # the flag is read at most once a second
        raise TaskCancelledError("stopped")

    w.services.deps.task_function = long_task
    task = w.services.submitting.submit("u", 1)
    w.services.dispatching.dispatch()
    (report,) = w.run_workers()
    [answer] = asked
    assert answer.task_status == STARTED and answer.cancel_requested
    assert report.outcomes == [CANCELLED] and w.timers.now == 1.0
    assert w.tasks.get(task.task_id).task_status == CANCELLED  # type: ignore[union-attr]
    assert w.control.slots(1)[0].is_free(w.clock.now)


def test_the_default_task_stops_when_cancelled() -> None:
    from chalicelib.tasks import limited_f

    flag = {"cancelled": False}
    ctx = TaskContext("t", "u", task_seconds=30, cancelled=lambda: flag["cancelled"])
    timer = threading.Timer(0.2, lambda: flag.update(cancelled=True))
    timer.start()
    with pytest.raises(TaskCancelledError):
        limited_f("x", ctx)


def test_a_running_task_whose_function_cannot_stop_is_a_conflict() -> None:
    w = make_world(capacity=1)
    task = w.services.submitting.submit("u", 1)
    w.tasks.start(task.task_id, "run", w.clock.now, w.clock.now + 900)
    w.services.deps.task_function = lambda x, ctx: None  # not marked cancellable
    with pytest.raises(ConflictError, match="cannot be stopped"):
        w.services.results.cancel(task.task_id)
    assert w.tasks.get(task.task_id).task_status == STARTED  # type: ignore[union-attr]


def test_finished_unknown_and_already_cancelled_tasks_change_nothing() -> None:
    w = make_world(capacity=1)
    done = w.services.submitting.submit("u", 1)
    w.services.dispatching.dispatch()
    w.run_workers()
    before = w.tasks.get(done.task_id)
    with pytest.raises(ConflictError, match="already finished"):
        w.services.results.cancel(done.task_id)
    assert w.tasks.get(done.task_id) == before
    with pytest.raises(NotFoundError):
        w.services.results.cancel("00000000-0000-4000-8000-000000000000")
    queued = w.services.submitting.submit("u", 2)
    w.services.results.cancel(queued.task_id)
    usage = w.services.accounts.user_usage("u")
    with pytest.raises(ConflictError):
        w.services.results.cancel(queued.task_id)
    assert w.services.accounts.user_usage("u") == usage  # not refunded twice


def test_cancel_racing_with_dispatch_either_runs_or_cancels_never_both() -> None:
    w = make_world(capacity=3)
    ran: list[str] = []
    lock = threading.Lock()

    def task(x: Any, ctx: TaskContext) -> None:
        with lock:
            ran.append(ctx.task_id)

    w.services.deps.task_function = task
    tasks = [w.services.submitting.submit(f"u{i % 5}", i) for i in range(60)]
    w.services.dispatching.dispatch()
    handoffs = w.invoker.take_handoffs()

    def cancel(task_id: str) -> str:
        try:
            return w.services.results.cancel(task_id).task_status
        except ConflictError:
            return "too late"

    with ThreadPoolExecutor(max_workers=6) as pool:
        workers = [pool.submit(w.services.worker.run, h) for h in handoffs]
        outcomes = list(pool.map(cancel, [t.task_id for t in tasks[::2]]))
        for future in workers:
            future.result()
    w.services.dispatching.dispatch(full_walk=True)
    w.run_workers()
    final = {t.task_id: w.tasks.get(t.task_id).task_status for t in tasks}  # type: ignore[union-attr]
    assert set(final.values()) <= {SUCCESS, CANCELLED}
    assert PENDING not in final.values()
    for t in tasks:
        assert (t.task_id in ran) == (final[t.task_id] == SUCCESS)  # ran exactly when it succeeded
    assert ran.count(tasks[0].task_id) <= 1 and len(ran) == len(set(ran))
    assert outcomes.count(CANCELLED) == sum(1 for s in final.values() if s == CANCELLED)
    assert all(slot.is_free(w.clock.now) for slot in w.control.slots(3))


def test_a_task_shorter_than_a_second_reads_no_cancel_flag() -> None:
    w = make_world(capacity=1)
    reads: list[str] = []
    get = w.tasks.get

    def counted_get(task_id: str) -> Any:
        reads.append(task_id)
        return get(task_id)

    @cancellable
    def quick(x: Any, ctx: TaskContext) -> str:
        return "stopped" if any(ctx.cancelled() for _ in range(3)) else "done"

    w.services.deps.task_function = quick
    task = w.services.submitting.submit("u", 1)
    w.services.dispatching.dispatch()
    w.tasks.get = counted_get  # type: ignore[method-assign]
    assert w.outcomes() == [SUCCESS]
    assert reads == []  # the start write returned the flag: no read in the first second
    assert w.tasks.get(task.task_id).result == "done"  # type: ignore[union-attr]


def test_a_cancel_answered_while_a_short_task_runs_ends_cancelled_not_success() -> None:
    """The 202 answer is kept: a task that finishes before it reads the flag is recorded CANCELLED."""
    w = make_world(capacity=1)
    answers: list[Any] = []

    @cancellable
    def quick(x: Any, ctx: TaskContext) -> str:
        answers.append(w.services.results.cancel(ctx.task_id))  # asked while running; never reads the flag
        return "done"

    w.services.deps.task_function = quick
    task = w.services.submitting.submit("u", 1)
    w.services.dispatching.dispatch()
    assert w.outcomes() == [CANCELLED]
    (asked,) = answers
    assert asked.task_status == STARTED and asked.cancel_requested
    record = w.tasks.get(task.task_id)
    assert record is not None and record.task_status == CANCELLED and record.result is None
    assert all(w.queues.depth(level) == 0 for level in range(LEVELS))


def test_a_failing_task_asked_to_stop_ends_cancelled_and_is_not_dead_lettered() -> None:
    w = make_world(capacity=1)

    @cancellable
    def fails(x: Any, ctx: TaskContext) -> str:
        w.services.results.cancel(ctx.task_id)
        raise RuntimeError("boom")

    w.services.deps.task_function = fails
    task = w.services.submitting.submit("u", 1)
    w.services.dispatching.dispatch()
    assert w.outcomes() == [CANCELLED]
    assert w.tasks.get(task.task_id).task_status == CANCELLED  # type: ignore[union-attr]
    assert w.queues.dead[task.priority_level] == []


def test_another_users_task_is_not_found_for_them_while_its_owner_and_admins_see_it() -> None:
    w = make_world(capacity=1)
    task = w.services.submitting.submit("alice", 1)
    assert w.services.results.result(task.task_id, Identity("alice")).user_id == "alice"
    assert w.services.results.result(task.task_id, Identity("root", admin=True)).user_id == "alice"
    with pytest.raises(NotFoundError):
        w.services.results.result(task.task_id, Identity("bob"))
    with pytest.raises(NotFoundError):
        w.services.results.cancel(task.task_id, Identity("bob"))
    assert w.tasks.get(task.task_id).task_status == PENDING  # type: ignore[union-attr]
    assert w.services.accounts.user_usage("alice").count_in_window == 1
    assert w.services.results.cancel(task.task_id, Identity("alice")).task_status == CANCELLED


def test_a_cancel_refunds_the_bucket_the_task_was_counted_in() -> None:
    w = make_world(capacity=1, window_seconds=600, window_buckets=10)
    w.clock.now = 60_000.0  # the start of a bucket
    early = w.services.submitting.submit("u", "early")
    w.clock.advance(120)  # two buckets on
    w.services.submitting.submit("u", "late")
    w.services.results.cancel(early.task_id)
    assert w.services.accounts.user_usage("u").count_in_window == 1
    w.clock.now = 60_000.0 + 600 + 60 + 1  # T + B after the early one: its bucket has left the window
    assert w.services.accounts.user_usage("u").count_in_window == 1  # the late one is still counted


def test_under_fifo_a_cancel_takes_the_one_queues_count_down_and_is_tallied() -> None:
    w = make_world(capacity=1, policy="fifo")
    tasks = [w.services.submitting.submit("heavy", i) for i in range(7)]
    assert tasks[6].priority_level == 2
    assert w.control.backlog().counts == (7, 0, 0, 0, 0, 0)
    w.services.results.cancel(tasks[6].task_id)
    assert w.control.backlog().counts == (6, 0, 0, 0, 0, 0)
    assert w.stats()["tasks"]["cancelled"] == 1
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS] * 6


def test_a_cancelled_task_says_when_and_is_kept_for_the_result_ttl() -> None:
    w = make_world(capacity=1, result_ttl_seconds=600)
    task = w.services.submitting.submit("u", 1)
    w.clock.advance(30)
    cancelled_at = w.clock.now
    cancelled = w.services.results.cancel(task.task_id)
    assert (cancelled.task_status, cancelled.finished_at) == (CANCELLED, cancelled_at)
    assert cancelled.expires_at == int(cancelled_at) + 600
    w.clock.advance(599)
    assert w.services.results.result(task.task_id).task_status == CANCELLED
    w.clock.advance(2)
    with pytest.raises(NotFoundError):
        w.services.results.result(task.task_id)


def test_a_cancel_that_loses_the_race_with_a_worker_asks_the_running_task_to_stop() -> None:
    w = make_world(capacity=1)
    w.services.deps.task_function = cancellable(lambda x, ctx: None)
    task = w.services.submitting.submit("u", 1)
    cancel_pending = w.tasks.cancel_pending

    def started_first(task_id: str, now: float, expires_at: float) -> bool:
        w.tasks.start(task_id, "run", now, now + 900)  # a worker's start wins the race
        return cancel_pending(task_id, now, expires_at)

    w.tasks.cancel_pending = started_first  # type: ignore[method-assign]
    asked = w.services.results.cancel(task.task_id)
    assert (asked.task_status, asked.cancel_requested) == (STARTED, True)
    assert w.services.accounts.user_usage("u").count_in_window == 1  # it ran: still counted


def test_a_cancel_of_a_task_that_finishes_meanwhile_says_it_has_finished() -> None:
    w = make_world(capacity=1)
    w.services.deps.task_function = cancellable(lambda x, ctx: None)
    task = w.services.submitting.submit("u", 1)
    w.tasks.start(task.task_id, "run", w.clock.now, w.clock.now + 900)
    request_cancel = w.tasks.request_cancel

    def finished_first(task_id: str) -> bool:
        w.tasks.finish(task_id, "run", SUCCESS, w.clock.now, w.clock.now + 60, result="done")
        return request_cancel(task_id)

    w.tasks.request_cancel = finished_first  # type: ignore[method-assign]
    with pytest.raises(ConflictError, match=r"already finished \(SUCCESS\)"):
        w.services.results.cancel(task.task_id)
    assert w.tasks.get(task.task_id).result == "done"  # type: ignore[union-attr]


def test_a_running_task_reads_its_cancel_flag_once_a_second() -> None:
    w = make_world(capacity=1)
    timers = ManualTimers()
    w.services.deps.worker_clock = timers.clock()
    reads: list[float] = []
    get = w.tasks.get

    def counted_get(task_id: str) -> Any:
        reads.append(timers.now)
        return get(task_id)

    seen: list[bool] = []

    @cancellable
    def polls(x: Any, ctx: TaskContext) -> None:
        for step in (0.0, 0.9, 0.1, 0.5):  # at 0, 0.9, 1.0 and 1.5 seconds into the run
            timers.advance(step)
            seen.append(ctx.cancelled())
        w.tasks.request_cancel(ctx.task_id)  # the API's cancel, 1.5 s into the run
        for step in (0.4, 0.1, 5.0):  # at 1.9, 2.0 and 7.0 seconds
            timers.advance(step)
            seen.append(ctx.cancelled())
        raise TaskCancelledError("stopped")

    w.services.deps.task_function = polls
    task = w.services.submitting.submit("u", 1)
    w.services.dispatching.dispatch()
    w.tasks.get = counted_get  # type: ignore[method-assign]
    assert w.outcomes() == [CANCELLED]
    assert seen == [False, False, False, False, False, True, True]
    assert reads == [1.0, 2.0]  # once a second, and not again once it is known
    assert w.tasks.get(task.task_id).task_status == CANCELLED  # type: ignore[union-attr]


def test_a_task_restarted_with_a_cancel_already_asked_for_sees_it_at_once() -> None:
    w = make_world(capacity=1)
    timers = ManualTimers()
    w.services.deps.worker_clock = timers.clock()
    seen: list[bool] = []

    @cancellable
    def looks_once(x: Any, ctx: TaskContext) -> str:
        seen.append(ctx.cancelled())
        return "ran"

    w.services.deps.task_function = looks_once
    task = w.services.submitting.submit("u", 1)
    # Its first worker started it, was asked to stop, and died before it looked.
    w.tasks.start(task.task_id, "dead-run", w.clock.now, w.clock.now + 900)
    w.tasks.request_cancel(task.task_id)
    w.clock.advance(901)
    w.services.dispatching.dispatch()
    assert w.outcomes() == [CANCELLED]
    assert seen == [True]


def test_an_id_that_cannot_be_a_task_is_not_found_without_a_read() -> None:
    w = make_world()
    reads: list[str] = []
    get = w.tasks.get

    def counted_get(task_id: str) -> Any:
        reads.append(task_id)
        return get(task_id)

    w.tasks.get = counted_get  # type: ignore[method-assign]
    for bad in ("", "../../etc", "x" * 5000):
        with pytest.raises(NotFoundError, match="never existed or its result has expired"):
            w.services.results.result(bad)
    assert reads == []  # DynamoDB refuses an empty or oversized key: no read is tried
    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(NotFoundError, match=f"no task with id '{missing}'"):
        w.services.results.result(missing)
    assert reads == [missing]


def test_a_conflict_over_a_running_task_that_cannot_stop_says_to_wait_for_its_result() -> None:
    w = make_world(capacity=1)
    task = w.services.submitting.submit("u", 1)
    w.tasks.start(task.task_id, "run", w.clock.now, w.clock.now + 900)
    w.services.deps.task_function = lambda x, ctx: None  # not marked cancellable
    with pytest.raises(ConflictError, match=r"is running .* cannot be stopped; wait for its result"):
        w.services.results.cancel(task.task_id)
