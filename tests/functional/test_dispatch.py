"""The dispatcher and worker Lambdas under moto: order, capacity, leases, duplicates."""

from __future__ import annotations

import pytest

from chalicelib import aws
from tests.functional.conftest import Harness


def test_dispatch_is_strict_priority_with_capacity_one(harness: Harness) -> None:
    heavy = [harness.submit("heavy", i).json_body for i in range(8)]  # levels 0,1,1,1,1,1,2,2
    light = [harness.submit(f"light{i}", i).json_body for i in range(3)]  # level 0 each
    order = []
    while True:
        report = harness.dispatch()
        handoffs = harness.invoker.handoffs[:]
        assert len(handoffs) <= 1  # capacity 1
        if not handoffs:
            assert report["started"] == 0
            break
        order.append(handoffs[0].level)
        harness.run_workers()
    assert order == [0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2]
    for task in heavy + light:
        assert harness.result(task["task_id"]).json_body["task_status"] == "SUCCESS"
    assert harness.queue_depths() == [0] * 6


def test_capacity_is_never_exceeded(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQH_CAPACITY", "3")
    for i in range(10):
        harness.submit(f"u{i}", i)
    assert harness.dispatch()["started"] == 3
    assert harness.dispatch()["started"] == 0
    running = harness.invoker.take_handoffs()
    assert len({h.slot_id for h in running}) == 3
    harness.client.lambda_.invoke("worker", running[0].to_payload())
    assert harness.dispatch()["started"] == 1  # exactly the freed slot


def test_a_lost_worker_frees_its_slot_after_the_lease(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQH_LEASE_SECONDS", "100")
    first = harness.submit("a", 1).json_body["task_id"]
    second = harness.submit("b", 2).json_body["task_id"]
    assert harness.dispatch()["started"] == 1
    (lost,) = harness.invoker.take_handoffs()  # the worker invocation is lost
    assert harness.dispatch()["started"] == 0  # slot leased
    harness.clock.now += 101
    assert harness.dispatch()["started"] == 1
    harness.run_workers()
    assert harness.result(second).json_body["task_status"] == "SUCCESS"
    # The lost task stays in SQS, invisible, and is dispatched again when its
    # visibility timeout runs out (moto keeps real time: end it by hand).
    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName="pqh-dev-level-0")["QueueUrl"]
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=lost.receipt_handle, VisibilityTimeout=0)
    event = harness.client.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
    )
    tick = harness.client.lambda_.invoke("dispatch_tick", event).payload
    assert tick["started"] == 1
    harness.run_workers()
    assert harness.result(first).json_body["task_status"] == "SUCCESS"


def test_a_message_delivered_twice_runs_once(harness: Harness) -> None:
    task_id = harness.submit().json_body["task_id"]
    harness.dispatch()
    (handoff,) = harness.invoker.take_handoffs()
    first = harness.client.lambda_.invoke("worker", handoff.to_payload()).payload
    finished = harness.result(task_id).json_body
    second = harness.client.lambda_.invoke("worker", handoff.to_payload()).payload
    assert (first["outcome"], second["outcome"]) == ("SUCCESS", "finished")
    assert harness.result(task_id).json_body == finished  # result not overwritten


def test_expired_counters_count_as_zero(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQH_WINDOW_SECONDS", "600")
    levels = [harness.submit("u", i).json_body["priority_level"] for i in range(7)]
    assert levels[-1] == 2
    harness.clock.now += 661  # T + B later; moto still holds the items
    assert harness.usage_items() > 0
    assert harness.submit("u", 8).json_body["priority_level"] == 0


def test_a_worker_payload_that_is_not_a_handoff_is_rejected(harness: Harness) -> None:
    from chalicelib.domain import BadHandoffError

    with pytest.raises(BadHandoffError):
        harness.client.lambda_.invoke("worker", {"task_id": "x"})
