"""Every route and every error, through chalice.test.Client under moto."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from chalicelib import aws
from tests.functional.conftest import Harness, admin_token_in_ssm

JSON = {"Content-Type": "application/json"}


def test_submit_answers_202_with_location_and_the_old_fields(harness: Harness) -> None:
    response = harness.submit("user_1", "foo")
    assert response.status_code == 202
    body = response.json_body
    assert set(body) == {"task_id", "result_url", "user_id", "priority_level", "task_status"}
    assert body["result_url"] == f"/result/{body['task_id']}"
    assert response.headers["Location"] == body["result_url"]
    assert (body["user_id"], body["priority_level"], body["task_status"]) == ("user_1", 0, "PENDING")
    assert harness.invoker.dispatch_triggers == 1  # work-conserving: dispatch on submit


def test_a_task_goes_from_pending_to_success_through_dispatcher_and_worker(harness: Harness) -> None:
    task_id = harness.submit("user_1", {"any": ["json", 1]}).json_body["task_id"]
    pending = harness.result(task_id)
    assert pending.status_code == 200
    assert pending.json_body["task_status"] == "PENDING" and pending.json_body["task_result"] is None
    assert harness.dispatch()["workers_started"] == 1
    assert harness.run_workers() == [{"outcomes": ["SUCCESS"], "levels": [0], "stopped_because": "queues empty"}]
    done = harness.result(task_id).json_body
    assert done["task_status"] == "SUCCESS"
    assert set(done["task_result"]) == {"init_timestamp", "input_x", "done_timestamp"}
    assert done["task_result"]["input_x"] == {"any": ["json", 1]}
    assert done["priority_level"] == 0
    assert done["submitted_at"] == harness.clock.now
    assert done["started_at"] is not None and done["finished_at"] is not None


def test_a_failing_task_reports_failure_with_its_error(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQH_TASK_FUNCTION", "chalicelib.tasks.always_fails")
    task_id = harness.submit().json_body["task_id"]
    harness.dispatch()
    assert harness.outcomes() == ["FAILURE"]
    body = harness.result(task_id).json_body
    assert body["task_status"] == "FAILURE"
    assert "always fails" in body["task_result"]["error"]


def test_the_scheduled_tick_dispatches(harness: Harness) -> None:
    task_id = harness.submit().json_body["task_id"]
    event = harness.client.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
    )
    report = harness.client.lambda_.invoke("dispatch_tick", event).payload
    assert report["workers_started"] == 1
    harness.run_workers()
    assert harness.result(task_id).json_body["task_status"] == "SUCCESS"


def test_unknown_and_malformed_task_ids_are_404_json(harness: Harness) -> None:
    for task_id in ("9f0b7a4e-0000-4000-8000-000000000000", "nope", "%2e%2e"):
        response = harness.result(task_id)
        assert response.status_code == 404
        assert response.json_body["error"] == "not_found"
        assert response.json_body["message"]


LONG_ID = "u" * 129


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"not json", JSON, 400, "invalid_json"),
        (b"", JSON, 400, "invalid_json"),
        (b"\xff\xfe", JSON, 400, "invalid_json"),
        (b'{"x": NaN, "user_id": "a"}', JSON, 400, "invalid_json"),
        (b'{"x": 1e400, "user_id": "a"}', JSON, 400, "invalid_json"),
        (b'{"user_id": "a", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", JSON, 400, "invalid_json"),
        (b"[1, 2]", JSON, 400, "invalid_body"),
        (b'"just a string"', JSON, 400, "invalid_body"),
        (b"null", JSON, 400, "invalid_body"),
        (b'{"x": "foo"}', JSON, 400, "missing_user_id"),
        (b'{"x": "foo", "user_id": ""}', JSON, 400, "invalid_user_id"),
        (b'{"x": "foo", "user_id": "   "}', JSON, 400, "invalid_user_id"),
        (b'{"x": "foo", "user_id": 7}', JSON, 400, "invalid_user_id"),
        (b'{"x": "foo", "user_id": null}', JSON, 400, "invalid_user_id"),
        (b'{"x": "foo", "user_id": ["a"]}', JSON, 400, "invalid_user_id"),
        (b'{"x": "foo", "user_id": "a\\u0000b"}', JSON, 400, "invalid_user_id"),
        (json.dumps({"x": 1, "user_id": LONG_ID}).encode(), JSON, 400, "invalid_user_id"),
        (b'{"user_id": "a"}', JSON, 400, "missing_x"),
        (json.dumps({"x": "a" * 70000, "user_id": "a"}).encode(), JSON, 413, "payload_too_large"),
        (b'{"x": 1, "user_id": "a"}', {"Content-Type": "text/html"}, 415, "unsupported_media_type"),
        (b"x=1&user_id=a", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ],
)
def test_malformed_submissions_are_4xx_json_and_change_nothing(
    harness: Harness, body: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    response = harness.client.http.post("/task", headers=headers, body=body)
    assert response.status_code == status
    assert response.json_body["error"] == code
    assert len(response.json_body["message"]) > 10
    assert harness.usage_items() == 0  # not counted
    assert harness.task_items() == 0  # not stored
    assert harness.queue_depths() == [0] * 6  # not queued
    assert harness.invoker.dispatch_triggers == 0


def test_null_x_and_a_body_without_content_type_are_accepted(harness: Harness) -> None:
    assert harness.client.http.post("/task", body=b'{"x": null, "user_id": "a"}').status_code == 202


def test_a_user_called_celery_is_just_a_user(harness: Harness) -> None:
    for user in ("celery", "_kombu.binding.celery", "unacked", "pqh-dev-level-0", "slot#0", "dispatch-lock", "backlog"):
        response = harness.submit(user, 1)
        assert response.status_code == 202
        assert response.json_body["priority_level"] == 0
    assert harness.dispatch()["workers_started"] == 1
    assert harness.outcomes() == ["SUCCESS"] * 7


def test_levels_follow_the_count_and_the_queues_fill_accordingly(harness: Harness) -> None:
    levels = [harness.submit("heavy", i).json_body["priority_level"] for i in range(17)]
    assert levels == [0] + [1] * 5 + [2] * 10 + [3]
    assert harness.queue_depths() == [1, 5, 10, 1, 0, 0]


def test_100_concurrent_submissions_by_one_user_give_the_threshold_distribution(
    atomic_moto_writes: None, harness: Harness
) -> None:
    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(lambda i: harness.submit("burst", i), range(100)))
    assert {r.status_code for r in responses} == {202}
    counts = Counter(r.json_body["priority_level"] for r in responses)
    assert [counts[level] for level in range(6)] == [1, 5, 10, 10, 10, 64]
    assert harness.queue_depths() == [1, 5, 10, 10, 10, 64]


# --- admin: weights ----------------------------------------------------------


def test_admin_routes_are_disabled_without_a_token(harness: Harness) -> None:
    response = harness.client.http.put("/admin/users/vip/weight", headers=JSON, body=b'{"weight": 6}')
    assert response.status_code == 403
    assert response.json_body["error"] == "forbidden"


def test_setting_a_weight_needs_the_admin_token_and_changes_levels(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin_token_in_ssm(monkeypatch, "s3cret")
    denied = harness.client.http.put(
        "/admin/users/vip/weight", headers={**JSON, "Authorization": "Bearer wrong"}, body=b'{"weight": 6}'
    )
    assert denied.status_code == 403
    auth = {**JSON, "Authorization": "Bearer s3cret"}
    for bad in (b'{"weight": 0}', b'{"weight": "6"}', b'{"weight": true}', b'{"weight": 1.5}', b"{}", b"[6]"):
        response = harness.client.http.put("/admin/users/vip/weight", headers=auth, body=bad)
        assert response.status_code == 400, bad
        assert response.json_body["error"] in ("invalid_weight", "invalid_body")
    ok = harness.client.http.put("/admin/users/vip/weight", headers=auth, body=b'{"weight": 6}')
    assert ok.status_code == 200
    assert ok.json_body == {"user_id": "vip", "count_in_window": 0, "weight": 6, "next_priority_level": 0}
    levels = [harness.submit("vip", i).json_body["priority_level"] for i in range(8)]
    assert levels == [0] * 6 + [1, 1]
    usage = harness.client.http.get("/admin/users/vip", headers=auth).json_body
    assert usage["count_in_window"] == 8 and usage["weight"] == 6


def test_delete_cancels_a_queued_task_and_answers_conflicts_as_json(harness: Harness) -> None:
    task_id = harness.submit("u", 1).json_body["task_id"]
    response = harness.client.http.delete(f"/task/{task_id}")
    assert response.status_code == 200
    assert response.json_body["task_status"] == "CANCELLED"
    assert harness.result(task_id).json_body["task_status"] == "CANCELLED"
    again = harness.client.http.delete(f"/task/{task_id}")
    assert (again.status_code, again.json_body["error"]) == (409, "conflict")
    missing = harness.client.http.delete("/task/00000000-0000-4000-8000-000000000000")
    assert (missing.status_code, missing.json_body["error"]) == (404, "not_found")
    harness.client.lambda_.invoke(
        "dispatch_tick",
        {
            "version": "0",
            "id": "x",
            "detail-type": "x",
            "source": "x",
            "account": "1",
            "time": "t",
            "region": "r",
            "resources": [],
            "detail": {},
        },
    )
    assert harness.outcomes() == ["finished"]  # the tick's worker met its message and dropped it
    assert harness.queue_depths() == [0] * 6


def test_delete_of_a_finished_task_is_a_conflict(harness: Harness) -> None:
    task_id = harness.submit("u", 1).json_body["task_id"]
    harness.dispatch()
    harness.outcomes()
    response = harness.client.http.delete(f"/task/{task_id}")
    assert response.status_code == 409
    assert "already finished" in response.json_body["message"]
    assert harness.result(task_id).json_body["task_status"] == "SUCCESS"


def test_a_queued_task_reports_its_position_and_eta(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQH_TASK_SECONDS", "1.5")
    monkeypatch.setenv("PQH_POLICY", "strict")
    ids = [harness.submit(f"user{i}", i).json_body["task_id"] for i in range(3)]  # all level 0
    heavy = [harness.submit("heavy", i).json_body["task_id"] for i in range(3)]  # heavy's 2nd, 3rd: level 1
    body = harness.result(ids[2]).json_body
    # Six queued on one slot: it counts as busy (half a 1.5-s task left), then two ahead.
    assert (body["queue_position"], body["queue_position_approximate"], body["eta_seconds"]) == (2, True, 3.75)
    assert harness.result(heavy[2]).json_body["queue_position"] == 4 + 1  # all of level 0, then heavy's 2nd
    harness.dispatch()
    harness.outcomes()
    done = harness.result(ids[2]).json_body
    assert done["task_status"] == "SUCCESS" and "queue_position" not in done


@pytest.mark.parametrize(
    ("service", "operation", "code"),
    [
        ("dynamodb", "UpdateItem", "ProvisionedThroughputExceededException"),
        ("dynamodb", "PutItem", "ThrottlingException"),
        ("sqs", "SendMessage", "RequestThrottled"),
        ("sqs", "SendMessage", "ServiceUnavailable"),
    ],
)
def test_throttling_is_a_503_with_retry_after_and_stores_nothing(
    harness: Harness, service: str, operation: str, code: str
) -> None:
    def throttled(model: Any, **kwargs: Any) -> None:
        if model.name == operation:
            raise ClientError({"Error": {"Code": code, "Message": "Rate exceeded"}}, operation)

    aws.client(service).meta.events.register(f"before-call.{service}.{operation}", throttled)
    try:
        response = harness.submit("u", 1)
    finally:
        aws.client(service).meta.events.unregister(f"before-call.{service}.{operation}", throttled)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json_body == {"error": "busy", "message": "the service is busy; retry shortly"}
    assert harness.task_items() == 0
    # The record and the message go out together: a message whose record was refused
    # is queued, and never runs (tests/unit/test_submit_overlap.py); a refused send
    # leaves no message.
    assert harness.queue_depths() == [int(operation == "PutItem")] + [0] * 5
    # The user was not charged for it: their next submission is still level 0.
    assert harness.submit("u", 2).json_body["priority_level"] == 0


@pytest.mark.parametrize(
    ("service", "operation", "table", "error"),
    [
        # The usage write: nothing else was made yet.
        ("dynamodb", "UpdateItem", "pqh-dev-usage", EndpointConnectionError(endpoint_url="http://dynamodb")),
        # The backlog write: the message went out beside it.
        ("dynamodb", "UpdateItem", "pqh-dev-control", ReadTimeoutError(endpoint_url="http://dynamodb")),
        ("dynamodb", "PutItem", "pqh-dev-tasks", ConnectionClosedError(endpoint_url="http://dynamodb")),
        ("sqs", "SendMessage", None, ReadTimeoutError(endpoint_url="http://sqs")),
    ],
)
def test_aws_out_of_reach_is_a_503_with_retry_after_and_stores_nothing(
    harness: Harness, service: str, operation: str, table: str | None, error: Exception
) -> None:
    harness.submit("u", 0)  # one accepted before: the failed one must not touch it

    def cut_off(params: dict[str, Any], **kwargs: Any) -> None:
        if table is None or params.get("TableName") == table:
            raise error

    event = f"before-parameter-build.{service}.{operation}"
    aws.client(service).meta.events.register(event, cut_off)
    try:
        response = harness.submit("u", 1)
    finally:
        aws.client(service).meta.events.unregister(event, cut_off)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json_body == {
        "error": "unavailable",
        "message": "the service is briefly unavailable; retry shortly",
    }
    assert harness.task_items() == 1
    # A message sent beside a write that failed stays queued without a record (it
    # never runs: tests/unit/test_submit_overlap.py); a refused send leaves none.
    # (The accepted one is at level 0; the failed one would have been the user's second: level 1.)
    assert harness.queue_depths() == [1, int(operation != "SendMessage" and table != "pqh-dev-usage")] + [0] * 4
    # Counted once, for the accepted one: the user's next submission is level 1.
    assert harness.submit("u", 2).json_body["priority_level"] == 1


def test_an_aws_error_that_is_not_throttling_is_not_a_503(harness: Harness) -> None:
    def denied(model: Any, **kwargs: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "UpdateItem")

    aws.client("dynamodb").meta.events.register("before-call.dynamodb.UpdateItem", denied)
    try:
        response = harness.submit("u", 1)
    finally:
        aws.client("dynamodb").meta.events.unregister("before-call.dynamodb.UpdateItem", denied)
    assert response.status_code == 500
    assert "Retry-After" not in response.headers
