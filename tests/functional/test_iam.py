"""Each function's generated IAM policy allows every call it makes: action and resource, evaluated by moto.

Two layers: here, moto's own IAM enforcement with per-function keys; in every
harness test, tests/policy_check.py evaluates each call with moto's evaluator.

Every route (in no-auth and api_key mode, the authorizer included), the dispatcher,
the worker and the schedule's tick (with its retention guard re-sending a message)
run with keys that hold exactly their own policy (tests/functional/iam_world.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from app import app
from chalicelib.settings import ConfigError
from chalicelib.worker.loop import Worker
from infra import iam
from tests.functional.conftest import Harness
from tests.functional.iam_world import IamWorld, iam_world
from tests.functional.test_api_keys import BOOT, load_app_with_api_keys
from tests.policy_check import Denial

ADMIN = {"Authorization": "Bearer t"}
MISSING = "00000000-0000-4000-8000-000000000000"


def granted(function: str) -> set[str]:
    return {action for actions, _ in iam.GRANTS[function] for action in actions}


def ok(response: Any, *statuses: int) -> Any:
    assert response.status_code in (statuses or (200,)), (response.status_code, response.body)
    return response.json_body


def drive_every_no_auth_route_and_function(world: IamWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    # Submits (one idempotent), reads, a missing task.
    task_id = ok(world.http("post", "/task", body={"user_id": "u", "x": 1}), 202)["task_id"]
    ok(world.http("post", "/task", {"Idempotency-Key": "k1"}, {"user_id": "v", "x": 1}), 202)
    ok(world.http("post", "/task", body={"user_id": "w", "x": "poison"}), 202)  # fails: dead-lettered
    ok(world.http("get", f"/result/{task_id}"))
    ok(world.http("get", f"/result/{MISSING}"), 404)
    assert world.dispatch_triggers > 0  # the API nudged the dispatcher through Lambda

    # The dispatcher hands out the slot; the worker runs the level's tasks. As if a task
    # were counted while it stopped, the worker nudges the dispatcher too.
    monkeypatch.setattr(Worker, "_anything_counted", lambda self: True)
    assert world.invoke("dispatcher", {})["workers_started"] == 1
    outcomes = [o for report in world.run_workers() for o in report["outcomes"]]
    assert sorted(outcomes) == ["FAILURE", "SUCCESS", "SUCCESS"]

    # Operators: dead letters, redrive (the task fails again), purge.
    assert ok(world.http("get", "/admin/dead-letters/0", ADMIN))["dead_letters"] == 1
    assert ok(world.http("post", "/admin/dead-letters/0/redrive", ADMIN))["redriven"] == 1
    world.invoke("dispatcher", {})
    world.run_workers()
    ok(world.http("delete", "/admin/dead-letters/0", ADMIN))

    # Cancel, weights, users, keys, stats.
    queued = ok(world.http("post", "/task", body={"user_id": "u", "x": 2}), 202)["task_id"]
    ok(world.http("delete", f"/task/{queued}"))
    ok(world.http("put", "/admin/users/u/weight", ADMIN, {"weight": 3}))
    assert ok(world.http("get", "/admin/users/u", ADMIN))["weight"] == 3
    key_id = ok(world.http("post", "/admin/keys", ADMIN, {"user_id": "u"}), 201)["key_id"]
    ok(world.http("delete", f"/admin/keys/{key_id}", ADMIN))
    assert ok(world.http("get", "/stats", ADMIN))["tasks"]["cancelled"] == 1

    # The tick: a full walk, then the retention guard re-sends a task queued for longer
    # than PQH_REQUEUE_AFTER_SECONDS (60 s here).
    ok(world.http("post", "/task", body={"user_id": "late", "x": 3}), 202)
    world.clock.now += 120
    report = world.tick()
    assert report["requeued"] == 1, report
    assert world.run_workers()  # the tick started a worker for it


def test_every_call_of_every_function_is_allowed_by_its_own_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQH_ADMIN_TOKEN", "t")
    monkeypatch.setenv("PQH_TASK_FUNCTION", "chalicelib.tasks.fails_on_poison")
    monkeypatch.setenv("PQH_REQUEUE_AFTER_SECONDS", "60")
    with iam_world(monkeypatch, app) as world:
        drive_every_no_auth_route_and_function(world, monkeypatch)
    assert world.denied() == []
    # Every call was evaluated on a named resource (no "*" stands in for an ARN).
    assert all(e.resource.startswith("arn:aws:") for e in world.evaluations), world.evaluations
    for function in ("api_handler", "dispatcher", "worker", "dispatch_tick"):
        assert world.actions_of(function), f"{function} made no AWS call"
        # Least privilege: a grant not used here is one a rarer path needs.
        unused = granted(function) - world.actions_of(function)
        # The worker's BatchGetItem reads every backlog shard (PQH_BACKLOG_SHARDS > 1; one here):
        # test_dispatch.py's shards test makes that call under the same policy check.
        rarer = {"dynamodb:BatchGetItem"} if function == "worker" else set()
        assert unused <= {"sqs:GetQueueUrl", "dynamodb:DeleteItem"} | rarer, (function, unused)
    # The key routes write the control table: the grant that was missing.
    control = "arn:aws:dynamodb:us-east-1:123456789012:table/pqh-dev-control"
    assert {("dynamodb:PutItem", control), ("dynamodb:DeleteItem", control)} <= {
        (e.action, e.resource) for e in world.evaluations if e.function == "api_handler"
    }


def test_api_key_mode_and_its_authorizer_are_allowed_by_their_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    keyed_app = load_app_with_api_keys(monkeypatch).app
    monkeypatch.setenv("PQH_ADMIN_TOKEN", BOOT)
    boot = {"Authorization": f"Bearer {BOOT}"}
    with iam_world(monkeypatch, keyed_app, auth="api_key") as world:
        ops = ok(world.http("post", "/admin/keys", boot, {"user_id": "ops", "admin": True}), 201)["api_key"]
        issued = ok(world.http("post", "/admin/keys", {"Authorization": f"Bearer {ops}"}, {"user_id": "alice"}), 201)
        alice = {"Authorization": f"Bearer {issued['api_key']}"}
        admin = {"Authorization": f"Bearer {ops}"}
        task_id = ok(world.http("post", "/task", alice, {"x": 1}), 202)["task_id"]
        ok(world.http("get", f"/result/{task_id}", alice))
        ok(world.http("delete", f"/task/{task_id}", alice))
        ok(world.http("put", "/admin/users/alice/weight", admin, {"weight": 2}))
        ok(world.http("get", "/admin/users/alice", admin))
        ok(world.http("get", "/stats", admin))
        ok(world.http("delete", f"/admin/keys/{issued['key_id']}", admin))
        assert world.http("get", f"/result/{task_id}", alice).status_code == 403  # revoked
    assert world.denied() == []
    # The authorizer compares the admin token (from SSM, cached per process) and looks keys up.
    assert world.actions_of("api_key_auth") == {"dynamodb:GetItem", "ssm:GetParameter"}
    assert {"dynamodb:PutItem", "dynamodb:DeleteItem"} <= world.actions_of("api_handler")


def without_control_put_item() -> dict[str, Any]:
    grants = {**iam.GRANTS}
    grants["api_handler"] = [
        ([a for a in actions if a != "dynamodb:PutItem"] if resources == ["ControlTable"] else actions, resources)
        for actions, resources in grants["api_handler"]
    ]
    return grants


def test_a_missing_grant_is_a_denied_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check has teeth: without the control table's PutItem no key can be issued."""
    monkeypatch.setattr(iam, "GRANTS", without_control_put_item())
    monkeypatch.setenv("PQH_ADMIN_TOKEN", "t")
    with iam_world(monkeypatch, app) as world:
        assert world.http("post", "/admin/keys", ADMIN, {"user_id": "u"}).status_code == 500
    control = "arn:aws:dynamodb:us-east-1:123456789012:table/pqh-dev-control"
    assert [(e.function, e.action, e.resource) for e in world.denied()] == [
        ("api_handler", "dynamodb:PutItem", control)
    ]


def test_the_suite_wide_policy_check_refuses_a_call_the_policy_denies(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every harness test evaluates its calls against the policies too (tests/policy_check.py)."""
    monkeypatch.setattr(iam, "GRANTS", without_control_put_item())
    monkeypatch.setenv("PQH_ADMIN_TOKEN", "t")
    assert harness.submit("u").status_code == 202  # allowed calls go through
    refused = harness.client.http.post("/admin/keys", headers=ADMIN, body=json.dumps({"user_id": "u"}))
    assert refused.status_code == 500
    control = "arn:aws:dynamodb:us-east-1:123456789012:table/pqh-dev-control"
    assert harness.policy.denials == [Denial("api_handler", "dynamodb:PutItem", control)]
    assert harness.policy.evaluated > 5
    harness.policy.denials.clear()  # seen: the harness would fail the test on it


def test_only_the_api_and_the_authorizer_may_read_the_admin_token_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    """ssm:GetParameter on exactly the stage's parameter (PQH_ADMIN_TOKEN_PARAMETER), for the two that check tokens."""
    from moto.ssm.models import ssm_backends

    from chalicelib import aws
    from chalicelib import settings as settings_mod
    from chalicelib.adapters import secrets

    with iam_world(monkeypatch, app) as world:
        ssm = ssm_backends["123456789012"]["us-east-1"]
        for name, value in (("/pqh/dev/admin-token", "op-secret"), ("/pqh/dev/other", "not yours")):
            # Put as the account itself: the functions' keys may not write parameters.
            ssm.put_parameter(name, "", value, "SecureString", "", "", False, [], "text", None, None)
        settings = settings_mod.load()
        assert settings.admin_token_parameter == "/pqh/dev/admin-token"  # the dev stage's config

        def read(function: str, name: str) -> str:
            secrets.reset()
            with world.acting_as(function):
                return secrets.admin_token(replace(settings, admin_token_parameter=name), aws.client("ssm"))

        assert read("api_handler", "/pqh/dev/admin-token") == "op-secret"
        assert read("api_key_auth", "/pqh/dev/admin-token") == "op-secret"
        for function, name in (("worker", "/pqh/dev/admin-token"), ("api_handler", "/pqh/dev/other")):
            with pytest.raises(ConfigError, match="AccessDenied"):
                read(function, name)
        denied = {(e.function, e.action, e.resource) for e in world.denied()}
        assert denied == {
            ("worker", "ssm:GetParameter", "arn:aws:ssm:us-east-1:123456789012:parameter/pqh/dev/admin-token"),
            ("api_handler", "ssm:GetParameter", "arn:aws:ssm:us-east-1:123456789012:parameter/pqh/dev/other"),
        }
        secrets.reset()


def test_reading_a_securestring_may_decrypt_only_through_ssm_for_that_parameter() -> None:
    policy = iam.stage_policy("api_handler", "pqh-dev", "/pqh/dev/admin-token")
    (read,) = [s for s in policy["Statement"] if "ssm:GetParameter" in s["Action"]]
    assert read["Action"] == ["ssm:GetParameter"]
    assert read["Resource"] == ["arn:aws:ssm:*:*:parameter/pqh/dev/admin-token"]
    (decrypt,) = [s for s in policy["Statement"] if "kms:Decrypt" in s["Action"]]
    assert decrypt["Condition"] == {
        "StringLike": {
            "kms:ViaService": "ssm.*.amazonaws.com",
            "kms:EncryptionContext:PARAMETER_ARN": "arn:aws:ssm:*:*:parameter/pqh/dev/admin-token",
        }
    }
    # No parameter configured: no SSM or KMS statement at all.
    actions = {a for s in iam.stage_policy("api_handler", "pqh-dev")["Statement"] for a in s["Action"]}
    assert not any(a.startswith(("ssm:", "kms:")) for a in actions)
    for function in ("worker", "dispatcher", "dispatch_tick"):
        actions = {a for s in iam.stage_policy(function, "pqh-dev", "/p")["Statement"] for a in s["Action"]}
        assert not any(a.startswith(("ssm:", "kms:")) for a in actions), function
