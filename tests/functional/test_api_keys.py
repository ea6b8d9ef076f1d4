"""API-key mode: the Chalice authorizer, hashed keys, ownership, admin rights; and idempotent submits."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from chalice.test import Client
from moto import mock_aws

from chalicelib import aws, wiring
from chalicelib.adapters.memory import RecordingInvoker
from infra.provision import provision
from tests.functional.conftest import (
    CLIENT_STAGE,
    ROOT,
    Clock,
    Harness,
    admin_token_in_ssm,
    check_aws_rules_and_policies,
    checked,
    stage_env,
)

BOOT = "bootstrap-admin-token"


def load_app_with_api_keys(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A second copy of app.py imported with PQH_AUTH=api_key: its routes carry the authorizer."""
    monkeypatch.setenv("PQH_AUTH", "api_key")
    spec = importlib.util.spec_from_file_location("app_with_api_keys", ROOT / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.AUTHORIZER is not None
    return module


class Keyed:
    def __init__(self, client: Client) -> None:
        self.client = client

    def call(self, method: str, path: str, key: str | None = None, body: Any = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["body"] = json.dumps(body)
        return getattr(self.client.http, method)(path, **kwargs)

    def issue(self, user_id: str, admin: bool = False) -> dict[str, Any]:
        response = self.call("post", "/admin/keys", BOOT, {"user_id": user_id, "admin": admin})
        assert response.status_code == 201, response.body
        return response.json_body  # type: ignore[no-any-return]


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Keyed]:
    module = load_app_with_api_keys(monkeypatch)
    for name, value in stage_env("api_key").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PQH_TASK_SECONDS", "0")
    invoker = RecordingInvoker()
    rules, policy = check_aws_rules_and_policies(monkeypatch)
    with mock_aws():
        provision("pqh-dev", aws.client("dynamodb"), aws.client("sqs"))
        admin_token_in_ssm(monkeypatch, BOOT)  # the bootstrap admin token, where the stage keeps it
        wiring.configure(invoker_factory=checked(invoker, policy), clock=Clock())
        with Client(module.app, stage_name=CLIENT_STAGE, project_dir=str(ROOT)) as client:
            yield Keyed(client)
    assert rules.violations == [], "calls AWS would refuse"
    assert policy.denials == [], "calls a function's IAM policy denies"


def test_without_a_key_or_with_a_wrong_one_nothing_is_served(keyed: Keyed) -> None:
    assert keyed.call("post", "/task", None, {"x": 1, "user_id": "u"}).status_code == 401
    assert keyed.call("post", "/task", "pqh_not-a-key", {"x": 1, "user_id": "u"}).status_code == 403
    assert keyed.call("get", "/stats", "pqh_not-a-key").status_code == 403
    assert keyed.client.http.get("/dashboard").status_code == 200  # the page itself holds no data


def test_keys_are_stored_hashed_and_name_their_user(keyed: Keyed) -> None:
    issued = keyed.issue("alice")
    key = issued["api_key"]
    assert key.startswith("pqh_") and len(key) > 40
    assert issued["key_id"] == hashlib.sha256(key.encode()).hexdigest()
    items = aws.client("dynamodb").scan(TableName="pqh-dev-control")["Items"]
    stored = json.dumps(items)
    assert key not in stored and issued["key_id"] in stored
    submitted = keyed.call("post", "/task", key, {"x": "foo"})  # no user_id: the key says who
    assert submitted.status_code == 202 and submitted.json_body["user_id"] == "alice"


def test_a_user_reads_and_cancels_only_their_own_tasks(keyed: Keyed) -> None:
    alice, bob = keyed.issue("alice")["api_key"], keyed.issue("bob")["api_key"]
    task_id = keyed.call("post", "/task", alice, {"x": 1, "user_id": "alice"}).json_body["task_id"]
    assert keyed.call("get", f"/result/{task_id}", alice).status_code == 200
    theirs = keyed.call("get", f"/result/{task_id}", bob)
    missing = keyed.call("get", "/result/00000000-0000-4000-8000-000000000000", bob)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json_body["error"] == missing.json_body["error"] == "not_found"
    assert keyed.call("delete", f"/task/{task_id}", bob).status_code == 404
    assert keyed.call("get", f"/result/{task_id}", alice).json_body["task_status"] == "PENDING"  # untouched
    refused = keyed.call("post", "/task", bob, {"x": 1, "user_id": "alice"})  # submitting as someone else
    assert refused.status_code == 403 and "bob" in refused.json_body["message"]
    assert keyed.call("delete", f"/task/{task_id}", alice).status_code == 200


def test_weights_stats_and_keys_need_an_admin_key(keyed: Keyed) -> None:
    alice = keyed.issue("alice")["api_key"]
    ops = keyed.issue("ops", admin=True)["api_key"]
    assert keyed.call("put", "/admin/users/alice/weight", alice, {"weight": 5}).status_code == 403
    assert keyed.call("get", "/stats", alice).status_code == 403
    assert keyed.call("post", "/admin/keys", alice, {"user_id": "alice", "admin": True}).status_code == 403
    assert keyed.call("put", "/admin/users/alice/weight", ops, {"weight": 5}).json_body["weight"] == 5
    assert keyed.call("get", "/stats", ops).status_code == 200
    task_id = keyed.call("post", "/task", alice, {"x": 1}).json_body["task_id"]
    assert keyed.call("get", f"/result/{task_id}", ops).status_code == 200  # operators see every task


def test_a_revoked_key_stops_working(keyed: Keyed) -> None:
    issued = keyed.issue("alice")
    assert keyed.call("post", "/task", issued["api_key"], {"x": 1}).status_code == 202
    assert keyed.call("delete", f"/admin/keys/{issued['key_id']}", BOOT).status_code == 200
    assert keyed.call("post", "/task", issued["api_key"], {"x": 1}).status_code == 403
    assert keyed.call("delete", f"/admin/keys/{issued['key_id']}", BOOT).status_code == 404


def test_the_authorizer_only_reads_the_control_table(keyed: Keyed, monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib.services.accounts import Accounts

    calls: list[tuple[str, str, str]] = []  # (who made it, operation, table)
    who = {"now": "route"}

    def record(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
        table = params.get("TableName") or ",".join(sorted(params.get("RequestItems", {})))
        calls.append((who["now"], model.name, str(table)))

    authenticate = Accounts.authenticate

    def authenticating(self: Accounts, token: str | None) -> Any:
        who["now"] = "authorizer"
        try:
            return authenticate(self, token)
        finally:
            who["now"] = "route"

    monkeypatch.setattr(Accounts, "authenticate", authenticating)
    aws.client("dynamodb").meta.events.register("before-parameter-build.dynamodb.*", record)
    alice = keyed.issue("alice")["api_key"]
    calls.clear()
    unknown = "00000000-0000-4000-8000-000000000000"
    assert keyed.call("get", f"/result/{unknown}", alice).status_code == 404  # the route reads the tasks table
    assert keyed.call("get", f"/result/{unknown}", "pqh_" + "0" * 43).status_code == 403  # an unknown key
    by_authorizer = [(operation, table) for caller, operation, table in calls if caller == "authorizer"]
    assert by_authorizer == [("GetItem", "pqh-dev-control")] * 2
    assert ("route", "GetItem", "pqh-dev-tasks") in calls  # the recording sees the route's reads too


# --- Idempotency-Key (no-auth mode, the default harness) ------------------------


def submit(harness: Harness, user_id: str, x: Any, key: str | None) -> Any:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return harness.client.http.post("/task", headers=headers, body=json.dumps({"x": x, "user_id": user_id}))


def test_a_retried_submit_with_the_same_key_is_the_same_task_counted_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin_token_in_ssm(monkeypatch, "t")
    first = submit(harness, "u", {"n": 1}, "order-42")
    again = submit(harness, "u", {"n": 1}, "order-42")
    assert first.status_code == again.status_code == 202
    assert first.json_body == again.json_body
    assert (first.headers["Idempotent-Replayed"], again.headers["Idempotent-Replayed"]) == ("false", "true")
    assert sum(harness.queue_depths()) == 1
    usage = harness.client.http.get("/admin/users/u", headers={"Authorization": "Bearer t"}).json_body
    assert usage["count_in_window"] == 1
    # Another user's same key is another task; a new key is a new task.
    assert submit(harness, "v", {"n": 1}, "order-42").json_body["task_id"] != first.json_body["task_id"]
    assert submit(harness, "u", {"n": 1}, "order-43").json_body["task_id"] != first.json_body["task_id"]
    assert sum(harness.queue_depths()) == 3


def test_the_same_key_with_another_x_is_refused_and_changes_nothing(harness: Harness) -> None:
    submit(harness, "u", 1, "k")
    refused = submit(harness, "u", 2, "k")
    assert refused.status_code == 422 and refused.json_body["error"] == "idempotency_key_reused"
    assert sum(harness.queue_depths()) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\there", "ü"])
def test_a_malformed_idempotency_key_is_a_400(harness: Harness, key: str) -> None:
    response = submit(harness, "u", 1, key)
    assert response.status_code == 400 and response.json_body["error"] == "invalid_idempotency_key"
    assert sum(harness.queue_depths()) == 0
