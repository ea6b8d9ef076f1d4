"""A submit writes its record while its message is sent, and notes a top user while it is counted."""

from __future__ import annotations

import threading

import pytest

from chalicelib.deps import RECORD_GRACE_SECONDS, SUBMIT_DEADLINE_SECONDS
from chalicelib.domain import PENDING, SUCCESS, UnavailableError
from chalicelib.policy import LEVELS
from chalicelib.ports import MISSING
from tests.fakes import World, make_world

WAIT = 10.0  # seconds; only reached when the two calls do not overlap


def test_the_record_is_written_while_the_message_is_sent() -> None:
    w = make_world(capacity=1)
    sending = threading.Event()
    create, send = w.tasks.create, w.queues.send

    def send_and_say(level: int, task: object) -> None:
        sending.set()
        send(level, task)  # type: ignore[arg-type]

    def create_once_sending(task: object) -> None:
        if not sending.wait(WAIT):
            raise TimeoutError("the record was written before the message went out")
        create(task)  # type: ignore[arg-type]

    w.queues.send = send_and_say  # type: ignore[method-assign]
    w.tasks.create = create_once_sending  # type: ignore[method-assign]
    task = w.services.submitting.submit("u", 1)
    assert w.tasks.get(task.task_id) is not None and w.queues.depth(0) == 1


def test_the_answer_waits_for_the_record() -> None:
    # The client may read its result at once: the record must exist when it is answered.
    w = make_world(capacity=1)
    entered, release = threading.Event(), threading.Event()
    create = w.tasks.create

    def slow_create(task: object) -> None:
        entered.set()
        release.wait(WAIT)
        create(task)  # type: ignore[arg-type]

    w.tasks.create = slow_create  # type: ignore[method-assign]
    answered: list[object] = []
    submitter = threading.Thread(target=lambda: answered.append(w.services.submitting.submit("u", 1)))
    submitter.start()
    assert entered.wait(WAIT)
    submitter.join(0.2)
    assert submitter.is_alive() and not answered and w.queues.depth(0) == 1  # sent, the record not yet written
    release.set()
    submitter.join(WAIT)
    assert answered and [t.task_status for t in w.tasks.all()] == [PENDING]


def test_the_top_users_note_goes_out_while_the_submit_is_counted_in_its_queue() -> None:
    w = make_world(capacity=1)
    counting = threading.Event()
    overlapped: list[bool] = []
    enqueue, note = w.control.enqueue, w.usage.note_top_user

    def enqueue_and_say(level: int) -> tuple[int, int]:
        counting.set()
        return enqueue(level)

    def note_once_counting(*args: object) -> int:
        overlapped.append(counting.wait(WAIT))
        return note(*args)  # type: ignore[arg-type]

    w.control.enqueue = enqueue_and_say  # type: ignore[method-assign]
    w.usage.note_top_user = note_once_counting  # type: ignore[method-assign]
    w.services.submitting.submit("u", 1)  # a first submission is a milestone: it is noted
    assert overlapped == [True]
    assert [u.user_id for u in w.services.operations.stats().users] == ["u"]


def test_a_failed_record_write_takes_back_the_count_and_the_usage_and_its_message_never_runs() -> None:
    w = make_world(capacity=1)
    create = w.tasks.create

    def throttled(task: object) -> None:
        raise RuntimeError("throttled")

    w.tasks.create = throttled  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="throttled"):
        w.services.submitting.submit("u", 1)
    w.tasks.create = create  # type: ignore[method-assign]
    assert w.control.backlog().counts == (0,) * LEVELS
    assert w.services.accounts.user_usage("u").count_in_window == 0
    assert w.tasks.all() == [] and w.stats()["tasks"]["submitted"] == 0
    # Its message went out beside the record. While a record could still land, the
    # worker that finds it gives it back; after that it deletes it. It never runs.
    w.services.dispatching.dispatch(full_walk=True)
    assert w.outcomes() == [MISSING] and w.queues.depth(0) == 1
    w.clock.advance(RECORD_GRACE_SECONDS)
    w.services.dispatching.dispatch(full_walk=True)
    assert w.outcomes() == [MISSING] and w.queues.depth(0) == 0
    assert w.ran == [] and w.control.backlog().counts == (0,) * LEVELS


def test_a_shut_down_pool_writes_the_record_in_line_and_a_failure_there_is_the_answer() -> None:
    w = make_world(capacity=1)
    w.services.deps.side_pool().shutdown()
    task = w.services.submitting.submit("u", 1)
    assert w.tasks.get(task.task_id) is not None and w.queues.depth(0) == 1

    def throttled(task: object) -> None:
        raise RuntimeError("throttled")

    w.tasks.create = throttled  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="throttled"):
        w.services.submitting.submit("u", 2)
    assert w.control.backlog().counts == (1,) + (0,) * (LEVELS - 1)
    assert w.services.accounts.user_usage("u").count_in_window == 1


def test_the_message_goes_out_while_the_submit_is_counted_in_its_queue() -> None:
    # The message needs nothing the queue's count returns: each call waits for the
    # other to have begun, so made one after the other they would time out. The
    # record (which holds the number) follows the count.
    w = make_world(capacity=1)
    sending, counting = threading.Event(), threading.Event()
    send, enqueue = w.queues.send, w.control.enqueue

    def send_once_counting(level: int, task: object) -> None:
        sending.set()
        if not counting.wait(WAIT):
            raise TimeoutError("the message went out before the submit was counted in its queue")
        send(level, task)  # type: ignore[arg-type]

    def enqueue_once_sending(level: int) -> tuple[int, int]:
        counting.set()
        if not sending.wait(WAIT):
            raise TimeoutError("the submit was counted in its queue before its message went out")
        return enqueue(level)

    w.queues.send = send_once_counting  # type: ignore[method-assign]
    w.control.enqueue = enqueue_once_sending  # type: ignore[method-assign]
    first = w.services.submitting.submit("u", 1)
    sending.clear(), counting.clear()
    second = w.services.submitting.submit("v", 2)
    assert [w.tasks.get(t.task_id).queue_seq for t in (first, second)] == [1, 2]  # type: ignore[union-attr]
    assert w.queues.depth(0) == 2 and w.control.backlog().counts[0] == 2


def _orphan(w: World) -> None:
    """A submit whose count in its queue failed: its message is out, with no record and no count."""
    enqueue = w.control.enqueue

    def throttled(level: int) -> tuple[int, int]:
        raise RuntimeError("throttled")

    w.control.enqueue = throttled  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="throttled"):
        w.services.submitting.submit("light", "orphan")
    w.control.enqueue = enqueue  # type: ignore[method-assign]


def test_a_failed_count_in_its_queue_takes_back_the_usage_and_its_message_never_runs() -> None:
    w = make_world(capacity=1)
    accepted = [w.services.submitting.submit("u", 1).task_id, w.services.submitting.submit("u", 2).task_id]
    w.services.dispatching.dispatch()
    assert w.outcomes() == [SUCCESS, SUCCESS]
    _orphan(w)
    accepted.append(w.services.submitting.submit("light", "kept").task_id)
    # The failed one was taken back once: the user's count is the one accepted task.
    assert w.services.accounts.user_usage("light").count_in_window == 1
    assert w.control.backlog().counts[0] == 1 and len(w.tasks.all()) == 3
    assert w.stats()["tasks"]["submitted"] == 3
    # Its message went out beside the count; without a record it never runs.
    for _ in range(int(RECORD_GRACE_SECONDS) + 2):
        w.services.dispatching.dispatch(full_walk=True)
        w.outcomes()
        w.clock.advance(1)
    assert w.ran == accepted
    assert w.queues.depth(0) == 0 and w.control.backlog().counts == (0,) * LEVELS


def test_a_message_without_a_record_comes_back_after_as_long_as_it_is_old() -> None:
    # A light user's orphan has the smallest tag: each pick would choose it again.
    w = make_world(capacity=1)
    _orphan(w)
    accepted = [w.services.submitting.submit(f"heavy{i % 3}", i).task_id for i in range(30)]
    picked_orphan = 0
    for _ in range(int(RECORD_GRACE_SECONDS) + 5):
        w.services.dispatching.dispatch(full_walk=True)
        picked_orphan += w.outcomes().count(MISSING)
        w.clock.advance(1)
    # Hidden for as long as it is old each time (1, 1, 2, 4, 8, 16, 28 s), then
    # dropped: eight picks in all, where one a second would be sixty.
    assert picked_orphan <= 8
    assert sorted(w.ran) == sorted(accepted) and w.queues.depth(0) == 0


def test_a_submit_that_would_write_its_record_past_the_deadline_gives_up_and_takes_everything_back() -> None:
    # A worker drops a message without a record once the grace has passed: a record
    # written later would be a task that never runs.
    w = make_world(capacity=1)
    enqueue = w.control.enqueue

    def slow_enqueue(level: int) -> tuple[int, int]:
        answer = enqueue(level)
        w.clock.advance(SUBMIT_DEADLINE_SECONDS + 1)
        return answer

    w.control.enqueue = slow_enqueue  # type: ignore[method-assign]
    with pytest.raises(UnavailableError):
        w.services.submitting.submit("u", 1)
    assert w.tasks.all() == [] and w.control.backlog().counts == (0,) * LEVELS
    assert w.services.accounts.user_usage("u").count_in_window == 0
    assert w.stats()["tasks"]["submitted"] == 0
