"""The dispatcher and worker Lambdas under moto: order, capacity, leases, duplicates."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib import aws
from tests.functional.conftest import Harness


def tick_event(harness: Harness) -> dict[str, Any]:
    return harness.client.events.generate_cw_event(  # type: ignore[no-any-return]
        source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
    )


def test_strict_priority_with_capacity_one(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQH_POLICY", "strict")
    heavy = [harness.submit("heavy", i).json_body for i in range(8)]  # levels 0,1,1,1,1,1,2,2
    light = [harness.submit(f"light{i}", i).json_body for i in range(3)]  # level 0 each
    assert harness.dispatch()["workers_started"] == 1
    assert harness.dispatch()["workers_started"] == 0  # capacity 1
    (report,) = harness.run_workers()
    assert report["levels"] == [0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2]
    for task in heavy + light:
        assert harness.result(task["task_id"]).json_body["task_status"] == "SUCCESS"
    assert harness.queue_depths() == [0] * 6


def test_capacity_is_never_exceeded(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQH_CAPACITY", "3")
    for i in range(10):
        harness.submit(f"u{i}", i)
    assert harness.dispatch()["workers_started"] == 3
    assert harness.dispatch()["workers_started"] == 0
    running = harness.invoker.take_handoffs()
    assert len({h.slot_id for h in running}) == 3
    done = harness.client.lambda_.invoke("worker", running[0].to_payload()).payload
    assert len(done["outcomes"]) == 10  # that worker drained the queues alone
    assert harness.dispatch()["workers_started"] == 0  # nothing queued, so no new worker


def test_a_lost_worker_frees_its_slot_after_the_lease(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQH_LEASE_SECONDS", "60")
    task_id = harness.submit("a", 1).json_body["task_id"]
    assert harness.dispatch()["workers_started"] == 1
    harness.invoker.take_handoffs()  # the worker invocation is lost
    assert harness.dispatch()["workers_started"] == 0  # slot leased
    harness.clock.now += 61
    assert harness.dispatch()["workers_started"] == 1
    assert harness.outcomes() == ["SUCCESS"]
    assert harness.result(task_id).json_body["task_status"] == "SUCCESS"


def test_a_message_delivered_twice_runs_once(harness: Harness) -> None:
    task_id = harness.submit().json_body["task_id"]
    harness.dispatch()
    assert harness.outcomes() == ["SUCCESS"]
    finished = harness.result(task_id).json_body
    # SQS delivers the message again (at-least-once): put a copy back and count it.
    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName="pqh-dev-level-0")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=f'{{"task_id": "{task_id}"}}')
    harness.client.lambda_.invoke("dispatch_tick", tick_event(harness))
    assert harness.outcomes() == ["finished"]
    assert harness.result(task_id).json_body == finished  # result not overwritten
    assert harness.queue_depths() == [0] * 6


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


def test_the_tick_dispatches_even_when_the_retention_guard_fails(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chalicelib.services.operations import Operations

    def broken(self: Operations) -> int:
        raise RuntimeError("the index query failed")

    monkeypatch.setattr(Operations, "refresh_stale", broken)
    task_id = harness.submit().json_body["task_id"]
    report = harness.client.lambda_.invoke("dispatch_tick", tick_event(harness)).payload
    assert report["requeued"] is None and report["workers_started"] == 1
    assert harness.outcomes() == ["SUCCESS"]
    assert harness.result(task_id).json_body["task_status"] == "SUCCESS"


def test_the_tick_sends_again_only_tasks_queued_longer_than_pqh_requeue_after_seconds(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PQH_REQUEUE_AFTER_SECONDS", "3600")
    old = harness.submit("a", 1).json_body["task_id"]
    harness.clock.now += 3000
    young = harness.submit("b", 2).json_body["task_id"]
    harness.invoker.take_handoffs()  # nothing runs: the service is saturated meanwhile
    harness.clock.now += 700  # the first task has been queued 3,700 s, the second 700 s

    report = harness.client.lambda_.invoke("dispatch_tick", tick_event(harness)).payload
    assert report["requeued"] == 1
    assert harness.queue_depths()[0] == 3  # two messages, and a fresh copy of the first task's

    harness.clock.now += 3000  # the second task: 3,700 s; the first was sent again 3,000 s ago
    report = harness.client.lambda_.invoke("dispatch_tick", tick_event(harness)).payload
    assert report["requeued"] == 1
    assert harness.queue_depths()[0] == 4

    harness.clock.now += 100  # nothing has waited 3,600 s since its last message
    report = harness.client.lambda_.invoke("dispatch_tick", tick_event(harness)).payload
    assert report["requeued"] == 0
    harness.invoker.take_handoffs()  # the ticks' hand-offs are dropped: their leases run out
    harness.clock.now += 3600
    # Each ran once: the copies are duplicates the start condition skips.
    harness.dispatch()
    outcomes = harness.outcomes()
    assert outcomes.count("SUCCESS") == 2
    assert {harness.result(t).json_body["task_status"] for t in (old, young)} == {"SUCCESS"}


def test_with_backlog_shards_every_task_runs_once_and_the_stats_add_the_shards_up(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PQH_BACKLOG_SHARDS through the deployed wiring: the control table holds a backlog
    # item per shard that got a task, and the task indexes' keys are spread.
    monkeypatch.setenv("PQH_BACKLOG_SHARDS", "4")
    monkeypatch.setenv("PQH_CAPACITY", "4")
    tasks = [harness.submit(f"user{i}", i).json_body["task_id"] for i in range(16)]
    control = aws.client("dynamodb").scan(TableName="pqh-dev-control")["Items"]
    backlog_items = sorted(item["pk"]["S"] for item in control if item["pk"]["S"].startswith("backlog"))
    assert len(backlog_items) >= 3 and set(backlog_items) <= {"backlog", "backlog#1", "backlog#2", "backlog#3"}
    stats = harness.client.http.get("/stats").json_body
    assert stats["tasks"]["submitted"] == 16 and stats["tasks"]["queued"] == 16
    queued_keys = {
        item["queued_level"]["N"]
        for item in aws.client("dynamodb").scan(TableName="pqh-dev-tasks")["Items"]
        if "queued_level" in item
    }
    assert len(queued_keys) >= 3  # level 0 spread over its shards' keys: 0, 6, 12, 18
    assert stats["queues"][0]["oldest_seconds"] is not None
    assert harness.dispatch()["workers_started"] == 4
    assert sorted(harness.outcomes()) == ["SUCCESS"] * 16
    for task_id in tasks:
        assert harness.result(task_id).json_body["task_status"] == "SUCCESS"
    stats = harness.client.http.get("/stats").json_body
    assert stats["tasks"]["queued"] == 0 and stats["tasks"]["succeeded"] == 16
    assert len(stats["recent"]) == 16 and harness.queue_depths() == [0] * 6
