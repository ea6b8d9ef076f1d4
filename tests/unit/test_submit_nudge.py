"""A submit's dispatcher nudge goes out while its message is sent, on one pool per process."""

from __future__ import annotations

import threading
from concurrent.futures import Executor, ThreadPoolExecutor

import pytest

from chalicelib.domain import PENDING
from chalicelib.policy import LEVELS
from tests.fakes import World, make_world

WAIT = 10.0  # seconds; only reached when the nudge and the send do not overlap


def _nudge_seen_by_send(w: World) -> threading.Event:
    """Make the send wait until the nudge has gone out (so they must overlap); returns 'the send went on'."""
    nudged, sent = threading.Event(), threading.Event()
    trigger, send = w.invoker.trigger_dispatch, w.queues.send

    def trigger_dispatch() -> None:
        trigger()
        nudged.set()

    def send_after_the_nudge(level: int, task: object) -> None:
        if not nudged.wait(WAIT):
            raise TimeoutError("the message was sent without the nudge under way")
        send(level, task)  # type: ignore[arg-type]
        sent.set()

    w.invoker.trigger_dispatch = trigger_dispatch  # type: ignore[method-assign]
    w.queues.send = send_after_the_nudge  # type: ignore[method-assign]
    return sent


def test_the_nudge_overlaps_the_send_and_the_answer_comes_after_both() -> None:
    w = make_world(capacity=2)
    sent = _nudge_seen_by_send(w)
    task = w.services.submitting.submit("u", 1)
    assert sent.is_set() and w.invoker.dispatch_triggers == 1
    assert w.queues.depth(0) == 1 and w.tasks.get(task.task_id) is not None


def test_a_send_that_fails_while_the_nudge_went_out_leaves_no_task_no_count_and_no_usage() -> None:
    w = make_world(capacity=2)
    w.services.submitting.submit("u", "kept")
    nudged = threading.Event()
    trigger = w.invoker.trigger_dispatch

    def trigger_dispatch() -> None:
        trigger()
        nudged.set()

    def send_fails_once_nudged(level: int, task: object) -> None:
        assert nudged.wait(WAIT)
        raise RuntimeError("sqs is down")

    w.invoker.trigger_dispatch = trigger_dispatch  # type: ignore[method-assign]
    w.queues.send = send_fails_once_nudged  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="sqs is down"):
        w.services.submitting.submit("u", "lost")
    # The worker the nudge may start finds nothing of it: no record, no count, no usage.
    assert [t.task_status for t in w.tasks.all()] == [PENDING]
    assert w.control.backlog().counts == (1,) + (0,) * (LEVELS - 1)
    assert w.services.accounts.user_usage("u").count_in_window == 1
    assert w.stats()["tasks"]["submitted"] == 1


def test_a_nudge_that_fails_on_the_pool_does_not_fail_the_submit() -> None:
    w = make_world(capacity=2)

    def lambda_down() -> None:
        raise ConnectionError("lambda unreachable")

    w.invoker.trigger_dispatch = lambda_down  # type: ignore[method-assign]
    task = w.services.submitting.submit("u", 1)
    assert w.tasks.get(task.task_id) is not None and w.queues.depth(0) == 1
    assert w.control.backlog().counts[0] == 1


def test_no_nudge_under_a_backlog_of_capacity_tasks() -> None:
    w = make_world(capacity=2)
    for i in range(4):
        w.services.submitting.submit(f"u{i}", i)
    assert w.invoker.dispatch_triggers == 2  # the third and fourth found two counted and not taken


def test_one_pool_serves_every_submit_of_the_process() -> None:
    w = make_world(capacity=100)
    built: list[Executor] = []

    def pool() -> Executor:
        built.append(ThreadPoolExecutor(2))
        return built[-1]

    w.services.deps.side_pool_factory = pool
    for i in range(5):
        w.services.submitting.submit("u", i)
    assert len(built) == 1 and w.invoker.dispatch_triggers == 5


def test_a_pool_that_is_shut_down_still_nudges_in_line() -> None:
    w = make_world(capacity=2)
    w.services.deps.side_pool().shutdown()
    task = w.services.submitting.submit("u", 1)
    assert w.invoker.dispatch_triggers == 1 and w.tasks.get(task.task_id) is not None


def test_the_answer_waits_for_the_nudge_so_no_invoke_is_left_in_flight_when_the_function_freezes() -> None:
    w = make_world(capacity=2)
    entered, release, sent = threading.Event(), threading.Event(), threading.Event()
    trigger, send = w.invoker.trigger_dispatch, w.queues.send

    def slow_trigger() -> None:
        entered.set()
        release.wait(WAIT)
        trigger()

    def send_and_say(level: int, task: object) -> None:
        send(level, task)  # type: ignore[arg-type]
        sent.set()

    w.invoker.trigger_dispatch = slow_trigger  # type: ignore[method-assign]
    w.queues.send = send_and_say  # type: ignore[method-assign]
    answered: list[object] = []
    submitter = threading.Thread(target=lambda: answered.append(w.services.submitting.submit("u", 1)))
    submitter.start()
    assert entered.wait(WAIT) and sent.wait(WAIT)
    submitter.join(0.2)
    assert submitter.is_alive() and not answered  # sent, but the nudge is still under way
    release.set()
    submitter.join(WAIT)
    assert answered and w.invoker.dispatch_triggers == 1
