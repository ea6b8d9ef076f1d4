"""A deploy rehearsal: `chalice deploy --stage dev` against LocalStack's runtime, then a look at what it made.

Chalice's own deployer runs its whole plan (infra/deploy_rehearsal.py). One thing is
not as on AWS, and this test says so rather than hide it: LocalStack without Docker
cannot run Lambda functions, so every function is created but stays in state Failed,
and chalice's wait for an Active function is skipped. No function's code runs here.
Everything else a first deploy creates is checked: the IAM roles and their policies,
the functions by name with their handlers and settings, the REST API with its
authorizer on every route but the open ones, and the schedule rule with its target.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from app import app
from infra.deploy_rehearsal import copy_project
from local.localstack import LocalStackServer
from local.process import ROOT

pytestmark = pytest.mark.localstack

FUNCTIONS = ["api_handler", "api_key_auth", "dispatch_tick", "dispatcher", "worker"]
# Chalice names the API's function after the app and stage alone.
FUNCTION_NAMES = {name: f"pqh-dev-{name}" for name in FUNCTIONS} | {"api_handler": "pqh-dev"}
OPEN_ROUTES = {("/dashboard", "GET"), ("/openapi.json", "GET")}


@pytest.fixture(scope="module")
def deployed(localstack: LocalStackServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Deploy a copy of the project (chalice writes its deployed state into the project)."""
    project = copy_project(tmp_path_factory.mktemp("project"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PQH_"))}
    env.update(
        AWS_ENDPOINT_URL=localstack.url,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
        PQH_AUTH="api_key",  # the dev stage's mode: Chalice attaches the authorizer when app.py sees it
    )
    run = subprocess.run(
        [sys.executable, "-m", "infra.deploy_rehearsal", "--stage", "dev", "--project-dir", str(project)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    return {"output": run.stdout, "record": json.loads((project / ".chalice" / "deployed" / "dev.json").read_text())}


def test_every_function_is_created_and_stays_failed_because_localstack_runs_no_lambda_without_docker(
    localstack: LocalStackServer, deployed: dict[str, Any]
) -> None:
    lambda_ = localstack.session().client("lambda")
    stage = json.loads((ROOT / ".chalice" / "config.json").read_text())["stages"]["dev"]
    for function, name in FUNCTION_NAMES.items():
        config = lambda_.get_function_configuration(FunctionName=name)
        assert config["Role"].endswith(f":role/pqh-dev-{function}")
        assert config["Handler"] == ("app.app" if function == "api_handler" else f"app.{function}")
        assert config["Environment"]["Variables"] == stage["environment_variables"]
        # Not as on AWS: without Docker, LocalStack cannot start a runtime for it.
        assert config["State"] == "Failed"
        # The deploy skipped chalice's wait for Active: the function was still Pending, or already Failed.
        assert re.search(
            rf"not waiting for {name} to be Active: LocalStack reports (Pending|Failed)\b", deployed["output"]
        )
    assert lambda_.get_function_configuration(FunctionName="pqh-dev-worker")["Timeout"] == 900


def test_each_function_has_its_own_role_holding_exactly_its_policy_file(
    localstack: LocalStackServer, deployed: dict[str, Any]
) -> None:
    iam = localstack.session().client("iam")
    for function in FUNCTIONS:
        role = f"pqh-dev-{function}"
        assert iam.list_role_policies(RoleName=role)["PolicyNames"] == [role]
        assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []
        document = iam.get_role_policy(RoleName=role, PolicyName=role)["PolicyDocument"]
        if isinstance(document, str):
            document = json.loads(document)
        policy_file = ROOT / ".chalice" / f"policy-dev-{function}.json"
        assert document == json.loads(policy_file.read_text())
        trust = iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
        assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "lambda.amazonaws.com"}]


def test_the_rest_api_has_every_route_behind_the_api_key_authorizer_except_the_open_ones(
    localstack: LocalStackServer, deployed: dict[str, Any]
) -> None:
    apigateway = localstack.session().client("apigateway")
    (api,) = [a for a in apigateway.get_rest_apis()["items"] if a["name"] == "pqh"]
    (authorizer,) = apigateway.get_authorizers(restApiId=api["id"])["items"]
    assert (authorizer["name"], authorizer["type"]) == ("api_key_auth", "TOKEN")
    assert authorizer["identitySource"] == "method.request.header.Authorization"
    assert authorizer["authorizerUri"].endswith(":function:pqh-dev-api_key_auth/invocations")
    methods = {
        (resource["path"], method): apigateway.get_method(
            restApiId=api["id"], resourceId=resource["id"], httpMethod=method
        )
        for resource in apigateway.get_resources(restApiId=api["id"], limit=500)["items"]
        for method in resource.get("resourceMethods", {})
    }
    for route in [("/task", "POST"), ("/result/{task_id}", "GET"), ("/admin/keys", "POST"), *OPEN_ROUTES]:
        assert route in methods
    declared = {(path, method) for path, entries in app.routes.items() for method in entries}
    assert set(methods) == declared
    for route, method in methods.items():
        assert method["methodIntegration"]["type"] == "AWS_PROXY"
        assert method["methodIntegration"]["uri"].endswith(":function:pqh-dev/invocations")
        if route in OPEN_ROUTES:
            assert method["authorizationType"] == "NONE", route
        else:
            assert (method["authorizationType"], method["authorizerId"]) == ("CUSTOM", authorizer["id"]), route
    assert [s["stageName"] for s in apigateway.get_stages(restApiId=api["id"])["item"]] == ["api"]
    (rest_api,) = [r for r in deployed["record"]["resources"] if r["resource_type"] == "rest_api"]
    assert rest_api["rest_api_id"] == api["id"]  # what chalice recorded is what LocalStack holds


def test_the_schedule_rule_runs_dispatch_tick_every_minute(
    localstack: LocalStackServer, deployed: dict[str, Any]
) -> None:
    session = localstack.session()
    events = session.client("events")
    rule = events.describe_rule(Name="pqh-dev-dispatch_tick-event")
    assert (rule["ScheduleExpression"], rule["State"]) == ("rate(1 minute)", "ENABLED")
    (target,) = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    assert target["Arn"].endswith(":function:pqh-dev-dispatch_tick")
    policy = json.loads(session.client("lambda").get_policy(FunctionName="pqh-dev-dispatch_tick")["Policy"])
    (grant,) = policy["Statement"]
    assert grant["Principal"] == {"Service": "events.amazonaws.com"}
    assert grant["Condition"]["ArnLike"]["AWS:SourceArn"] == rule["Arn"]
