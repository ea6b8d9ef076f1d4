"""/stats, /dashboard and the dead-letter routes under moto, through Chalice's test client."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest

from chalicelib import aws
from chalicelib.adapters.dynamo import DynamoControlStore, DynamoTaskStore
from tests.functional.conftest import Harness, admin_token_in_ssm

ADMIN = {"Authorization": "Bearer secret"}


@pytest.fixture
def poison(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQH_TASK_FUNCTION", "chalicelib.tasks.fails_on_poison")


def stats(harness: Harness) -> dict:  # type: ignore[type-arg]
    response = harness.client.http.get("/stats")
    assert response.status_code == 200, response.body
    return response.json_body  # type: ignore[no-any-return]


def test_stats_of_an_idle_system(harness: Harness) -> None:
    s = stats(harness)
    assert s["capacity"] == 1 and s["running"] == 0 and s["policy"] == "priority"
    assert [q["level"] for q in s["queues"]] == [0, 1, 2, 3, 4, 5]
    assert all(q["queued"] == q["dead_letters"] == 0 for q in s["queues"])
    assert s["tasks"] == {
        "submitted": 0,
        "queued": 0,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
        "dead_letters": 0,
    }
    assert s["users"] == [] and s["recent"] == []
    assert s["wait_seconds"] == {"p50": None, "p90": None, "max": None}


def test_stats_follow_tasks_from_submit_to_result(harness: Harness) -> None:
    for _ in range(3):
        harness.submit("heavy")
    harness.submit("light")
    s = stats(harness)
    assert s["tasks"]["submitted"] == 4 and s["tasks"]["queued"] == 4
    assert [q["queued"] for q in s["queues"]] == [2, 2, 0, 0, 0, 0]  # heavy's 2nd and 3rd are level 1
    assert [q["counted"] for q in s["queues"]] == [2, 2, 0, 0, 0, 0]
    assert [(u["user_id"], u["count_in_window"], u["priority_level"], u["queued"]) for u in s["users"]] == [
        ("heavy", 3, 1, 3),
        ("light", 1, 1, 1),
    ]

    harness.clock.now += 2.0  # they waited two seconds
    s = stats(harness)
    assert [q["oldest_seconds"] for q in s["queues"]] == [2.0, 2.0, None, None, None, None]
    harness.dispatch()
    assert len(harness.outcomes()) == 4
    s = stats(harness)
    assert s["tasks"]["queued"] == 0 and s["tasks"]["succeeded"] == 4 and s["running"] == 0
    assert all(q["oldest_seconds"] is None for q in s["queues"])
    assert [u["queued"] for u in s["users"]] == [0, 0]
    assert len(s["recent"]) == 4 and {t["task_status"] for t in s["recent"]} == {"SUCCESS"}
    assert all(t["wait_seconds"] == 2.0 and t["run_seconds"] == 0.0 for t in s["recent"])
    assert s["wait_seconds"]["p50"] == 2.0


def test_a_cancelled_task_is_counted(harness: Harness) -> None:
    task_id = harness.submit("u").json_body["task_id"]
    assert harness.client.http.delete(f"/task/{task_id}").status_code == 200
    s = stats(harness)
    assert s["tasks"]["cancelled"] == 1 and s["tasks"]["queued"] == 0
    assert [t["task_status"] for t in s["recent"]] == ["CANCELLED"]


def test_a_poison_task_is_failed_dead_lettered_and_can_be_redriven_or_purged(
    harness: Harness, poison: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin_token_in_ssm(monkeypatch, "secret")
    task_id = harness.submit("u", "poison").json_body["task_id"]
    harness.dispatch()
    assert harness.outcomes() == ["FAILURE"]
    result = harness.result(task_id).json_body
    assert result["task_status"] == "FAILURE" and "poison" in result["task_result"]["error"]
    s = harness.client.http.get("/stats", headers=ADMIN).json_body
    assert s["tasks"]["failed"] == 1 and s["tasks"]["dead_letters"] == 1 and s["queues"][0]["dead_letters"] == 1
    assert "poison" in s["recent"][0]["error"]

    look = harness.client.http.get("/admin/dead-letters/0", headers=ADMIN).json_body
    assert look["dead_letters"] == 1
    [letter] = look["messages"]
    assert letter["task_id"] == task_id and letter["task_status"] == "FAILURE" and "poison" in letter["reason"]

    assert harness.client.http.post("/admin/dead-letters/0/redrive", headers=ADMIN).json_body == {
        "redriven": 1,
        "dropped": 0,
    }
    assert harness.result(task_id).json_body["task_status"] == "PENDING"
    s = harness.client.http.get("/stats", headers=ADMIN).json_body
    assert s["queues"][0]["queued"] == 1 and s["queues"][0]["dead_letters"] == 0
    assert s["tasks"]["submitted"] == 1  # queued again, not submitted again
    harness.dispatch()
    assert harness.outcomes() == ["FAILURE"]  # still poison: back in the dead-letter queue

    assert harness.client.http.delete("/admin/dead-letters/0", headers=ADMIN).json_body == {"purged": 1}
    assert harness.client.http.get("/admin/dead-letters/0", headers=ADMIN).json_body["dead_letters"] == 0
    assert harness.result(task_id).json_body["task_status"] == "FAILURE"  # purging keeps the result


def test_operator_routes_need_the_admin_token_when_one_is_set(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert harness.client.http.get("/admin/dead-letters/0").status_code == 403  # no token set: disabled
    admin_token_in_ssm(monkeypatch, "secret")
    for method, path in (
        ("get", "/stats"),
        ("get", "/admin/dead-letters/0"),
        ("post", "/admin/dead-letters/0/redrive"),
        ("delete", "/admin/dead-letters/0"),
    ):
        response = getattr(harness.client.http, method)(path, headers={"Authorization": "Bearer wrong"})
        assert response.status_code == 403, path
        assert response.json_body["error"] == "forbidden"
    assert harness.client.http.get("/stats", headers=ADMIN).status_code == 200


@pytest.mark.parametrize("level", ["6", "-1", "x", "00", "1.5"])
def test_a_bad_level_is_a_400(harness: Harness, monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    admin_token_in_ssm(monkeypatch, "secret")
    response = harness.client.http.get(f"/admin/dead-letters/{level}", headers=ADMIN)
    assert response.status_code == 400 and response.json_body["error"] == "invalid_request"


def test_the_dashboard_is_one_offline_page_that_reads_stats(harness: Harness) -> None:
    response = harness.client.http.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    page = response.body.decode()
    assert 'fetch("stats"' in page  # relative: works under API Gateway's stage path too
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing loaded from elsewhere


def test_a_submit_that_sqs_refuses_is_not_counted_as_submitted(harness: Harness) -> None:
    refused: list[str] = []

    def refuse_once(model: Any, **kwargs: Any) -> Any:
        if refused:
            return None
        refused.append(model.name)
        error = {"Error": {"Code": "InternalError", "Message": "refused"}, "ResponseMetadata": {"HTTPStatusCode": 500}}
        return SimpleNamespace(status_code=500, headers={}, content=b"", text=""), error

    aws.client("sqs").meta.events.register("before-call.sqs.SendMessage", refuse_once)
    assert harness.submit("u").status_code == 500
    assert refused == ["SendMessage"]
    after_failure = stats(harness)["tasks"]
    assert (after_failure["submitted"], after_failure["queued"]) == (0, 0)
    assert harness.submit("u").status_code == 202
    assert stats(harness)["tasks"]["submitted"] == 1


def test_a_finished_task_whose_message_is_not_yet_deleted_is_not_running(harness: Harness) -> None:
    """A worker deletes finished tasks' messages in batches: until then SQS counts them received, not running."""
    task_id = harness.submit("u").json_body["task_id"]
    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName="pqh-dev-level-0")["QueueUrl"]
    assert len(sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1).get("Messages", [])) == 1
    level_0 = stats(harness)["queues"][0]
    assert (level_0["queued"], level_0["received_not_deleted"], level_0["running"]) == (0, 1, 0)

    # A worker holds slot 0 and starts the task.
    now = harness.clock.now
    assert DynamoControlStore(aws.client("dynamodb"), "pqh-dev-control").claim_slot(0, "worker-1", now, now + 60)
    store = DynamoTaskStore(aws.client("dynamodb"), "pqh-dev-tasks")
    store.start(task_id, "run-1", now, now + 930, "worker-1")
    s = stats(harness)
    assert (s["queues"][0]["received_not_deleted"], s["queues"][0]["running"]) == (1, 1)
    assert [q["running"] for q in s["queues"][1:]] == [0, 0, 0, 0, 0]
    assert (s["tasks"]["running"], s["slots_held"]) == (1, 1)

    store.finish(task_id, "run-1", "SUCCESS", now + 1, now + 3600, result="done")
    s = stats(harness)
    level_0 = s["queues"][0]
    assert (level_0["queued"], level_0["received_not_deleted"], level_0["running"]) == (0, 1, 0)
    assert s["tasks"]["running"] == 0
    assert level_0["in_flight"] == level_0["received_not_deleted"]  # the old name, kept for existing readers


def test_a_task_whose_worker_died_stops_counting_as_running_when_its_slot_lease_runs_out(harness: Harness) -> None:
    """It runs again once SQS shows its message again (960 s); it is not running meanwhile."""
    task_id = harness.submit("u").json_body["task_id"]
    now = harness.clock.now
    assert DynamoControlStore(aws.client("dynamodb"), "pqh-dev-control").claim_slot(0, "worker-1", now, now + 60)
    DynamoTaskStore(aws.client("dynamodb"), "pqh-dev-tasks").start(task_id, "dead-run", now, now + 930, "worker-1")
    assert stats(harness)["queues"][0]["running"] == 1
    harness.clock.now += 61  # the slot lease ran out; the task's run lease (930 s) has not
    s = stats(harness)
    assert (s["queues"][0]["running"], s["tasks"]["running"], s["slots_held"]) == (0, 0, 0)
