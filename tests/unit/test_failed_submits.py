"""A submit that fails is not accepted: nothing stays counted, queued or kept, as if it never came."""

from __future__ import annotations

import pytest

from chalicelib.domain import CANCELLED, PENDING, NotFoundError
from chalicelib.policy import LEVELS
from tests.fakes import make_world


def _sqs_down(level: int, task: object) -> None:
    raise RuntimeError("sqs is down")


def test_a_failed_send_under_fifo_takes_back_the_one_queues_count_and_the_users_usage() -> None:
    w = make_world(capacity=1, policy="fifo")
    for i in range(6):
        w.services.submitting.submit("heavy", i)  # levels 0, 1, 1, 1, 1, 1: all in queue 0 under fifo
    send = w.queues.send
    w.queues.send = _sqs_down  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        w.services.submitting.submit("heavy", "lost")  # its level is 2; its queue is 0
    assert w.control.backlog().counts == (6, 0, 0, 0, 0, 0)
    assert w.services.accounts.user_usage("heavy").count_in_window == 6
    stats = w.stats()["tasks"]
    assert (stats["submitted"], stats["queued"]) == (6, 6)
    assert sorted(t.task_status for t in w.tasks.all()) == [PENDING] * 6
    w.queues.send = send  # type: ignore[method-assign]
    # The failed submit left no trace: the next one lands where the lost one would have.
    assert w.services.submitting.submit("heavy", "again").priority_level == 2


def test_a_failed_send_refunds_the_bucket_it_counted_in() -> None:
    w = make_world(window_seconds=600, window_buckets=10)
    w.clock.now = 60_000.0  # the start of a bucket
    w.services.submitting.submit("u", "kept")
    w.clock.advance(120)  # two buckets on
    w.queues.send = _sqs_down  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        w.services.submitting.submit("u", "lost")
    assert w.services.accounts.user_usage("u").count_in_window == 1
    w.clock.now = 60_000.0 + 600 + 60 + 1  # T + B after the first: its bucket has left the window, not the third's
    assert w.services.accounts.user_usage("u").count_in_window == 0


def test_a_failed_count_write_refunds_the_usage_and_creates_nothing() -> None:
    w = make_world(capacity=1)
    w.services.submitting.submit("u", "kept")

    def throttled(level: int) -> tuple[int, int]:
        raise RuntimeError("throttled")

    w.control.enqueue = throttled  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        w.services.submitting.submit("u", "lost")
    assert w.services.accounts.user_usage("u").count_in_window == 1
    assert len(w.tasks.all()) == 1 and w.queues.depth(0) == 1
    assert w.control.backlog().counts == (1, 0, 0, 0, 0, 0)


def test_an_unqueued_task_whose_record_cannot_be_deleted_is_cancelled_and_kept_only_for_the_result_ttl() -> None:
    w = make_world(result_ttl_seconds=3600)
    w.clock.now = 2_000_000.0

    def down(*args: object) -> None:
        raise RuntimeError("down")

    w.queues.send = down  # type: ignore[method-assign]
    w.tasks.delete = down  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        w.services.submitting.submit("u", 1)
    [record] = w.tasks.all()
    assert (record.task_status, record.finished_at, record.expires_at) == (CANCELLED, 2_000_000.0, 2_003_600)
    # It counts as neither queued nor used.
    assert w.control.backlog().counts == (0,) * LEVELS
    assert w.services.accounts.user_usage("u").count_in_window == 0
    assert w.services.results.result(record.task_id).task_status == CANCELLED
    w.clock.advance(3601)
    with pytest.raises(NotFoundError):
        w.services.results.result(record.task_id)


def test_a_rollback_that_fails_too_still_answers_with_the_original_error() -> None:
    # The error decides the client's answer (a throttle is a 503 with Retry-After): a
    # failing clean-up must not replace it.
    w = make_world(capacity=1)

    def usage_down(*args: object) -> bool:
        raise ConnectionError("usage table unreachable")

    def count_down(level: int) -> None:
        raise ConnectionError("control table unreachable")

    w.usage.refund = usage_down  # type: ignore[method-assign]
    w.control.withdraw = count_down  # type: ignore[method-assign]
    w.queues.send = _sqs_down  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="sqs is down"):
        w.services.submitting.submit("u", "after the send")

    def throttled(level: int) -> tuple[int, int]:
        raise RuntimeError("throttled")

    w.control.enqueue = throttled  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="throttled"):
        w.services.submitting.submit("u", "before the send")


def test_levels_follow_the_configured_thresholds() -> None:
    w = make_world(thresholds=(2, 4, 6, 8, 10))
    assert [w.services.submitting.submit("u", i).priority_level for i in range(12)] == [
        0,
        0,
        1,
        1,
        2,
        2,
        3,
        3,
        4,
        4,
        5,
        5,
    ]


def test_a_task_that_never_runs_is_kept_while_its_message_may_be_queued_and_a_result_ttl_more() -> None:
    w = make_world(capacity=1, result_ttl_seconds=600)
    task = w.services.submitting.submit("u", 1)
    w.clock.advance(14 * 24 * 3600 + 599)  # SQS's retention, and all but a second of the result TTL
    assert w.services.results.result(task.task_id).task_status == PENDING
    w.clock.advance(2)
    with pytest.raises(NotFoundError):
        w.services.results.result(task.task_id)
