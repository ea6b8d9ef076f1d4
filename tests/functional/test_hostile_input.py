"""Bodies a hostile or careless client sends: each is a clear 4xx, or a task that can be read back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.functional.conftest import Harness, admin_token_in_ssm

JSON = {"Content-Type": "application/json"}
LIMIT = 64  # the documented nesting limit of 'x' (README's error table)


def nested(depth: int) -> str:
    """JSON text of an array nested ``depth`` levels deep around a zero."""
    return "[" * depth + "0" + "]" * depth


def post(harness: Harness, body: str, headers: dict[str, str] | None = None) -> Any:
    return harness.client.http.post("/task", headers={**JSON, **(headers or {})}, body=body.encode())


@pytest.mark.parametrize("where", ["x", "user_id", "key"])
def test_a_lone_surrogate_anywhere_in_the_body_is_a_400(harness: Harness, where: str) -> None:
    bodies = {
        "x": '{"user_id": "u", "x": "\\ud800"}',
        "user_id": '{"user_id": "u\\udfff", "x": 1}',
        "key": '{"user_id": "u", "x": {"\\ud800": 1}}',
    }
    response = post(harness, bodies[where])
    assert response.status_code == 400
    assert response.json_body["error"] == "invalid_json"
    assert "surrogate" in response.json_body["message"]
    assert harness.task_items() == 0 and harness.usage_items() == 0


def test_a_surrogate_pair_is_one_character_and_is_accepted(harness: Harness) -> None:
    response = post(harness, '{"user_id": "u", "x": "\\ud83d\\ude00"}')
    assert response.status_code == 202
    task_id = response.json_body["task_id"]
    harness.dispatch()
    assert harness.outcomes() == ["SUCCESS"]
    assert harness.result(task_id).json_body["task_result"]["input_x"] == "\U0001f600"


@pytest.mark.parametrize("idempotency", [False, True])
def test_x_nested_to_the_limit_runs_and_its_result_reads_back(harness: Harness, idempotency: bool) -> None:
    headers = {"Idempotency-Key": "deep-1"} if idempotency else {}
    response = post(harness, '{"user_id": "u", "x": ' + nested(LIMIT) + "}", headers)
    assert response.status_code == 202
    task_id = response.json_body["task_id"]
    harness.dispatch()
    assert harness.outcomes() == ["SUCCESS"]
    result = harness.result(task_id)
    assert result.status_code == 200
    assert result.json_body["task_result"]["input_x"] == json.loads(nested(LIMIT))


@pytest.mark.parametrize("depth", [LIMIT + 1, 484, 968, 20_000])
@pytest.mark.parametrize("idempotency", [False, True])
def test_x_nested_past_the_limit_is_a_400_and_nothing_is_stored(
    harness: Harness, depth: int, idempotency: bool
) -> None:
    headers = {"Idempotency-Key": f"deep-{depth}"} if idempotency else {}
    response = post(harness, '{"user_id": "u", "x": ' + nested(depth) + "}", headers)
    assert response.status_code == 400
    assert response.json_body["error"] == "invalid_json"
    assert "nests" in response.json_body["message"] and "64" in response.json_body["message"]
    assert harness.task_items() == 0 and harness.usage_items() == 0


def test_over_the_queued_limit_a_submit_is_429_with_retry_after_and_nothing_is_queued(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PQH_MAX_QUEUED_PER_USER", "2")
    monkeypatch.setenv("PQH_TASK_SECONDS", "5")
    assert [harness.submit("greedy", i).status_code for i in range(2)] == [202, 202]
    refused = harness.submit("greedy", "third")
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "5"
    assert refused.json_body["error"] == "too_many_queued"
    assert "PQH_MAX_QUEUED_PER_USER" in refused.json_body["message"]
    assert sum(harness.queue_depths()) == 2 and harness.task_items() == 2
    usage = harness.client.http.get("/stats").json_body
    assert {u["user_id"]: u["count_in_window"] for u in usage["users"]}["greedy"] == 2
    assert harness.submit("other", 1).status_code == 202


def test_a_user_id_in_the_path_is_percent_decoded_and_checked(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin_token_in_ssm(monkeypatch, "s3cret")
    admin = {"Authorization": "Bearer s3cret"}
    assert harness.submit("ü ser", 1).status_code == 202
    found = harness.client.http.get("/admin/users/%C3%BC%20ser", headers=admin)
    assert found.status_code == 200
    assert (found.json_body["user_id"], found.json_body["count_in_window"]) == ("ü ser", 1)
    refusals = {
        "/admin/users/%FF": "invalid_path",  # not UTF-8 once decoded
        "/admin/users/%01": "invalid_user_id",  # a control character
        "/admin/users/" + "%C3%BC" * 129: "invalid_user_id",  # 129 characters
    }
    for path, code in refusals.items():
        refused = harness.client.http.get(path, headers=admin)
        assert (refused.status_code, refused.json_body["error"]) == (400, code), path


def test_an_idempotent_submit_refused_at_the_limit_can_be_retried_with_its_key(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PQH_MAX_QUEUED_PER_USER", "1")
    first = harness.submit("u", "first").json_body["task_id"]
    keyed = {**JSON, "Idempotency-Key": "retry-me"}
    body = json.dumps({"user_id": "u", "x": "second"})
    refused = harness.client.http.post("/task", headers=keyed, body=body)
    assert refused.status_code == 429 and refused.json_body["error"] == "too_many_queued"
    assert harness.client.http.delete(f"/task/{first}").status_code == 200
    accepted = harness.client.http.post("/task", headers=keyed, body=body)
    assert accepted.status_code == 202 and accepted.headers["Idempotent-Replayed"] == "false"
    assert harness.result(accepted.json_body["task_id"]).json_body["task_status"] == "PENDING"
