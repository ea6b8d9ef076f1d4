"""A submit with an Idempotency-Key: a retry gets the first answer back and is counted once."""

from __future__ import annotations

import pytest

from chalicelib import views
from chalicelib.adapters.memory import MemoryIdempotency
from chalicelib.domain import IdempotencyMismatchError
from chalicelib.settings import ConfigError
from tests.fakes import make_world


def test_a_retried_submit_gets_the_first_answer_and_is_counted_and_queued_once() -> None:
    w = make_world(capacity=1)
    w.services.deps.idempotency = MemoryIdempotency()
    first, replayed = w.services.submitting.submit_once("alice", {"n": 1}, "key-1")
    assert replayed is False
    assert views.submitted(first) == {
        "task_id": first.task_id,
        "result_url": f"/result/{first.task_id}",
        "user_id": "alice",
        "priority_level": 0,
        "task_status": "PENDING",
    }
    assert w.tasks.get(first.task_id).x == {"n": 1}  # type: ignore[union-attr]
    again, replayed = w.services.submitting.submit_once("alice", {"n": 1}, "key-1")
    assert (again, replayed) == (first, True)
    assert w.services.accounts.user_usage("alice").count_in_window == 1
    assert [t.task_id for t in w.tasks.all()] == [first.task_id] and w.queues.depth(0) == 1
    # The key is the caller's own: another user with the same key submits a task of their own.
    other, replayed = w.services.submitting.submit_once("bob", {"n": 1}, "key-1")
    assert replayed is False and other.task_id != first.task_id and other.user_id == "bob"
    # A new key is a new task (the user's second: level 1).
    second, replayed = w.services.submitting.submit_once("alice", {"n": 1}, "key-2")
    assert (replayed, second.priority_level) == (False, 1)


def test_a_key_used_again_with_another_x_is_refused_and_nothing_is_counted() -> None:
    w = make_world(capacity=1)
    w.services.deps.idempotency = MemoryIdempotency()
    w.services.submitting.submit_once("alice", 1, "key-1")
    with pytest.raises(IdempotencyMismatchError):
        w.services.submitting.submit_once("alice", 2, "key-1")
    assert w.services.accounts.user_usage("alice").count_in_window == 1 and len(w.tasks.all()) == 1


def test_idempotent_submits_without_a_store_are_a_configuration_error() -> None:
    w = make_world()
    with pytest.raises(ConfigError, match=r"^idempotent submits need an idempotency store$"):
        w.services.submitting.submit_once("alice", 1, "key-1")
    assert w.tasks.all() == []
