"""The infrastructure definition: one template, cfn-lint clean, least privilege."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from chalicelib.settings import TASK_RUN_LEASE_SECONDS
from infra.iam import GRANTS, policy_path, stage_admin_token_parameter, stage_auth, stage_policy
from infra.merge_template import merge_template
from infra.provision import load_template

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_tables_have_ttl_and_every_queue_has_a_dead_letter_queue() -> None:
    resources = load_template()["Resources"]
    assert resources["TasksTable"]["Properties"]["TimeToLiveSpecification"] == {
        "AttributeName": "expires_at",
        "Enabled": True,
    }
    assert resources["UsageTable"]["Properties"]["TimeToLiveSpecification"]["Enabled"] is True
    for level in range(6):
        queue = resources[f"Level{level}Queue"]["Properties"]
        assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": [f"Level{level}DeadLetterQueue", "Arn"]}
        # A received message stays invisible longer than any run of its task can last.
        assert queue["VisibilityTimeout"] > TASK_RUN_LEASE_SECONDS


def test_a_task_run_lease_outlives_the_worker_lambda() -> None:
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    assert config["lambda_functions"]["worker"]["lambda_timeout"] < TASK_RUN_LEASE_SECONDS


def test_stage_policy_files_are_generated_from_infra_iam() -> None:
    for function in GRANTS:
        on_disk = json.loads(policy_path("dev", function).read_text())
        expected = stage_policy(function, "pqh-dev", stage_admin_token_parameter("dev"))
        assert on_disk == expected, f"run: python -m infra.iam dev ({function})"


def _walk_statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for logical, resource in template["Resources"].items():
        if resource.get("Type") == "AWS::IAM::Role":
            for policy in resource["Properties"].get("Policies", []):
                for statement in policy["PolicyDocument"]["Statement"]:
                    found.append((logical, statement))
    return found


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`chalice package --merge-template`, as `make package` runs it."""
    out = tmp_path_factory.mktemp("package")
    merge = out / "merge.json"
    merge.write_text(json.dumps(merge_template()))
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "PQH_AUTH": stage_auth("dev")}
    subprocess.run(
        [str(BIN / "chalice"), "package", "--stage", "dev", "--merge-template", str(merge), str(out / "pkg")],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    return json.loads((out / "pkg" / "sam.json").read_text())  # type: ignore[no-any-return]


def test_packaged_template_is_cfn_lint_clean(packaged: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "sam.json"
    path.write_text(json.dumps(packaged))
    result = subprocess.run([str(BIN / "cfn-lint"), str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_packaged_template_has_least_privilege_roles(packaged: dict[str, Any]) -> None:
    statements = _walk_statements(packaged)
    roles = {logical for logical, _ in statements}
    assert roles == {"ApiHandlerRole", "DispatcherRole", "DispatchTickRole", "WorkerRole", "ApiKeyAuthRole"}
    for logical, statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all("*" not in action for action in actions), (logical, actions)
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        assert "*" not in resources, (logical, statement)
    by_role: dict[str, set[str]] = {}
    for logical, statement in statements:
        by_role.setdefault(logical, set()).update(statement["Action"])
    assert not any(a.startswith("sqs:") for a in by_role["DispatcherRole"])  # the dispatcher only hands out slots

    def targets(role: str, action: str) -> set[str]:
        found = set()
        for logical, statement in statements:
            if logical == role and action in statement["Action"]:
                found |= {json.dumps(r, sort_keys=True) for r in statement["Resource"]}
        return found

    dead_letter_queues = {json.dumps({"Fn::GetAtt": [f"Level{n}DeadLetterQueue", "Arn"]}) for n in range(6)}
    # The worker sends only to dead-letter queues; the API reads only dead-letter queues.
    assert targets("WorkerRole", "sqs:SendMessage") == dead_letter_queues
    assert targets("ApiHandlerRole", "sqs:ReceiveMessage") == dead_letter_queues
    assert targets("ApiHandlerRole", "sqs:PurgeQueue") == dead_letter_queues


def test_the_deployed_stage_uses_api_keys_on_every_route_but_two_static_documents(packaged: dict[str, Any]) -> None:
    assert stage_auth("dev") == "api_key"  # no-auth mode is for local use only
    paths = packaged["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]["paths"]
    open_routes = {
        (path, method) for path, ops in paths.items() for method, op in ops.items() if not op.get("security")
    }
    # A static page (the stats it reads need an admin key) and the API's description.
    assert open_routes == {("/dashboard", "get"), ("/openapi.json", "get")}
    assert len(paths) >= 10


def test_packaged_functions_point_at_the_stacks_own_resources(packaged: dict[str, Any]) -> None:
    for logical in ("APIHandler", "Dispatcher", "DispatchTick", "Worker", "ApiKeyAuth"):
        props = packaged["Resources"][logical]["Properties"]
        variables = props["Environment"]["Variables"]
        assert variables["PQH_TASKS_TABLE"] == {"Ref": "TasksTable"}
        assert variables["PQH_QUEUE_PREFIX"] == {"Ref": "AWS::StackName"}
        assert props["Role"] == {"Fn::GetAtt": [f"{logical.replace('APIHandler', 'ApiHandler')}Role", "Arn"]}
    assert packaged["Resources"]["Worker"]["Properties"]["EventInvokeConfig"] == {"MaximumRetryAttempts": 0}
    # A nudge the dispatcher's reserved concurrency throttled is dropped after a
    # minute (the tick's period), not kept for Lambda's default six hours.
    assert packaged["Resources"]["Dispatcher"]["Properties"]["EventInvokeConfig"] == {
        "MaximumEventAgeInSeconds": 60,
        "MaximumRetryAttempts": 0,
    }
    tick = packaged["Resources"]["DispatchTick"]["Properties"]["Events"]
    assert tick["DispatchTickEvent"]["Properties"]["Schedule"] == "rate(1 minute)"


def test_compose_files_localstack_takes_message_group_ids_runs_without_a_token_and_is_the_one_tested() -> None:
    """4.4 refused MessageGroupId on standard queues (every submit a 500); from 4.7.0 on it takes them.

    Images after 4.14.0 (calendar versions, from 2026.3.0) exit at start without
    LOCALSTACK_AUTH_TOKEN. The LocalStack tier runs localstack-core from PyPI at the same
    version, so what the tests ran is what the compose file starts.
    """
    compose = yaml.safe_load((ROOT / "docker-compose.localstack.yml").read_text())
    tag = compose["services"]["localstack"]["image"].partition(":")[2]
    version = tuple(int(part) for part in tag.split("."))
    assert (4, 7, 0) <= version <= (4, 14, 0), tag
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements-localstack.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins["localstack-core"] == tag


def test_compose_file_starts_localstack_with_the_services_pqh_uses() -> None:
    """`docker compose config` needs the compose plugin, which this machine lacks; check the shape."""
    compose = yaml.safe_load((ROOT / "docker-compose.localstack.yml").read_text())
    assert set(compose) <= {"name", "services", "volumes"}
    service = compose["services"]["localstack"]
    image, _, tag = service["image"].partition(":")
    assert image == "localstack/localstack" and tag and tag != "latest"  # pinned
    assert "127.0.0.1:4566:4566" in service["ports"]
    used = set(service["environment"]["SERVICES"].split(","))
    assert {"dynamodb", "sqs", "lambda", "iam", "events", "apigateway", "cloudformation"} <= used
    assert any(v.startswith("/var/run/docker.sock:") for v in service["volumes"])  # Lambda needs Docker
    for volume in service["volumes"]:
        name = volume.split(":", 1)[0]
        assert name.startswith("/") or name in compose["volumes"]


def test_the_gateways_own_refusals_have_the_routes_error_shape(packaged: dict[str, Any]) -> None:
    from chalicelib import gateway

    # On the Serverless::Api, so every deployment of the stage carries them.
    responses = packaged["Resources"]["RestAPI"]["Properties"]["GatewayResponses"]
    assert set(responses) >= {"UNAUTHORIZED", "ACCESS_DENIED", "MISSING_AUTHENTICATION_TOKEN", "DEFAULT_4XX"}
    for kind, answer in gateway.ANSWERS.items():
        props = responses[kind]
        assert props["ResponseParameters"]["Headers"]["Content-Type"] == "'application/json'"
        assert props["StatusCode"] == str(answer.status)
        assert json.loads(props["ResponseTemplates"]["application/json"]) == {
            "error": answer.error,
            "message": answer.message,
        }
    # Any other refusal of the gateway's (throttling included) keeps its message, in the same shape.
    template = responses["DEFAULT_4XX"]["ResponseTemplates"]["application/json"]
    filled = template.replace("$context.error.messageString", json.dumps("Too Many Requests"))
    assert set(json.loads(filled)) == {"error", "message"}


def test_the_stage_is_throttled_and_the_background_functions_have_reserved_concurrency(
    packaged: dict[str, Any],
) -> None:
    (setting,) = packaged["Resources"]["RestAPI"]["Properties"]["MethodSettings"]
    assert (setting["ResourcePath"], setting["HttpMethod"]) == ("/*", "*")
    assert 0 < setting["ThrottlingRateLimit"] <= setting["ThrottlingBurstLimit"] <= 5000
    capacity = int(stage_env_value("PQH_CAPACITY", "1"))
    worker = packaged["Resources"]["Worker"]["Properties"]["ReservedConcurrentExecutions"]
    # A slot's worker and the one it hands over to may overlap, once per slot.
    assert worker >= 2 * capacity
    assert 1 <= packaged["Resources"]["Dispatcher"]["Properties"]["ReservedConcurrentExecutions"] <= 2
    assert packaged["Resources"]["DispatchTick"]["Properties"]["ReservedConcurrentExecutions"] == 1


def stage_env_value(name: str, default: str) -> str:
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    return str(config["stages"]["dev"].get("environment_variables", {}).get(name, default))


# --- alarms and the dashboard -------------------------------------------------------


def _queue_dimension(logical: str) -> list[dict[str, Any]]:
    return [{"Name": "QueueName", "Value": {"Fn::GetAtt": [logical, "QueueName"]}}]


def _metric(alarm: dict[str, Any]) -> tuple[str, str, Any, str, Any, str]:
    p = alarm["Properties"]
    return (p["Namespace"], p["MetricName"], p["Dimensions"], p["Statistic"], p["Threshold"], p["ComparisonOperator"])


def test_alarms_watch_dead_letters_and_the_oldest_task_of_every_level(packaged: dict[str, Any]) -> None:
    resources = packaged["Resources"]
    oldest_seconds = [900, 1800, 3600, 7200, 14400, 28800]  # the dev stage's pqh_monitoring block
    for level in range(6):
        assert _metric(resources[f"Level{level}DeadLettersAlarm"]) == (
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            _queue_dimension(f"Level{level}DeadLetterQueue"),
            "Maximum",
            0,
            "GreaterThanThreshold",
        )
        assert _metric(resources[f"Level{level}OldestTaskAlarm"]) == (
            "AWS/SQS",
            "ApproximateAgeOfOldestMessage",
            _queue_dimension(f"Level{level}Queue"),
            "Maximum",
            oldest_seconds[level],
            "GreaterThanThreshold",
        )


def test_alarms_watch_the_workers_errors_and_throttles_and_the_apis_5xx(packaged: dict[str, Any]) -> None:
    resources = packaged["Resources"]
    worker = [{"Name": "FunctionName", "Value": {"Ref": "Worker"}}]
    at_least = "GreaterThanOrEqualToThreshold"
    assert _metric(resources["WorkerErrorsAlarm"]) == ("AWS/Lambda", "Errors", worker, "Sum", 1, at_least)
    assert _metric(resources["WorkerThrottlesAlarm"]) == ("AWS/Lambda", "Throttles", worker, "Sum", 1, at_least)
    api = [{"Name": "ApiName", "Value": {"Ref": "AWS::StackName"}}, {"Name": "Stage", "Value": "api"}]
    assert _metric(resources["Api5xxAlarm"]) == ("AWS/ApiGateway", "5XXError", api, "Sum", 5, at_least)
    # The dimension names the API by the stack's name: the API must carry it.
    assert resources["RestAPI"]["Properties"]["Name"] == {"Ref": "AWS::StackName"}
    assert resources["RestAPI"]["Properties"]["StageName"] == "api"
    alarms = [r for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert len(alarms) == 15
    assert {a["Properties"]["TreatMissingData"] for a in alarms} == {"notBreaching"}  # an idle queue is no trouble


def test_alarms_notify_only_when_an_email_or_a_topic_is_given(packaged: dict[str, Any]) -> None:
    assert packaged["Parameters"]["AlarmEmail"]["Default"] == ""
    assert packaged["Parameters"]["AlarmTopicArn"]["Default"] == ""
    assert packaged["Conditions"] == {
        "AlarmEmailGiven": {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]},
        "AlarmTopicGiven": {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]},
    }
    topic = packaged["Resources"]["AlarmTopic"]
    assert topic["Type"] == "AWS::SNS::Topic" and topic["Condition"] == "AlarmEmailGiven"
    assert topic["Properties"]["Subscription"] == [{"Endpoint": {"Ref": "AlarmEmail"}, "Protocol": "email"}]
    expected = [
        {"Fn::If": ["AlarmEmailGiven", {"Ref": "AlarmTopic"}, {"Ref": "AWS::NoValue"}]},
        {"Fn::If": ["AlarmTopicGiven", {"Ref": "AlarmTopicArn"}, {"Ref": "AWS::NoValue"}]},
    ]
    for resource in packaged["Resources"].values():
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            assert resource["Properties"]["AlarmActions"] == expected
            assert resource["Properties"]["OKActions"] == expected


def test_the_cloudwatch_dashboard_shows_what_the_dashboard_page_shows(packaged: dict[str, Any]) -> None:
    dashboard = packaged["Resources"]["Dashboard"]
    assert dashboard["Type"] == "AWS::CloudWatch::Dashboard"
    text, variables = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]
    assert variables == {"ApiStage": "api"}
    widgets = {w["properties"]["title"]: w["properties"] for w in json.loads(text)["widgets"]}

    def lines(title: str) -> list[tuple[str, ...]]:
        return [tuple(m[:4]) for m in widgets[title]["metrics"]]

    queues = [f"${{Level{n}Queue.QueueName}}" for n in range(6)]
    dead = [f"${{Level{n}DeadLetterQueue.QueueName}}" for n in range(6)]
    assert lines("Queued tasks per level") == [
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", q) for q in queues
    ]
    assert lines("Dead letters per level") == [
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", q) for q in dead
    ]
    assert ("AWS/Lambda", "ConcurrentExecutions", "FunctionName", "${Worker}") in lines("Running")
    throughput = "Throughput: tasks taken off the queues (finished or cancelled)"
    assert lines(throughput) == [("AWS/SQS", "NumberOfMessagesDeleted", "QueueName", q) for q in queues]
    assert widgets[throughput]["stat"] == "Sum"
    assert lines("Oldest queued task per level") == [
        ("AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", q) for q in queues
    ]
    # The functions' own metrics (EMF), under the stage the dev stage's functions publish.
    waits = widgets["Wait from submit to start per level (p50, p95)"]["metrics"]
    assert [tuple(m[:6]) for m in waits] == [
        ("pqh", "WaitTime", "stage", "dev", "priority_level", str(n)) for n in range(6) for _ in ("p50", "p95")
    ]
    assert [m[6]["stat"] for m in waits[:2]] == ["p50", "p95"]
    troubles = lines("AWS throttles seen, lost races, dead letters")
    assert [m[1] for m in troubles] == ["Throttles", "PickRacesLost", "SlotClaimsLost", "DeadLetters"]
    # Every chart says what its axis counts.
    assert all(w["yAxis"]["left"]["label"] for w in widgets.values())


def test_a_malformed_monitoring_block_names_the_key_it_cannot_use() -> None:
    from infra.monitoring import MonitoringConfigError, alarm_settings

    assert alarm_settings({}).oldest_task_seconds == (900, 1800, 3600, 7200, 14400, 28800)
    with pytest.raises(MonitoringConfigError, match="oldest_task_alarm_seconds"):
        alarm_settings({"oldest_task_alarm_seconds": [60, 60]})
    with pytest.raises(MonitoringConfigError, match="api_5xx"):
        alarm_settings({"api_5xx": 0})
    with pytest.raises(MonitoringConfigError, match="unknown keys"):
        alarm_settings({"emial": "ops@example.com"})


def test_the_api_and_the_authorizer_read_the_admin_token_from_the_stages_parameter(packaged: dict[str, Any]) -> None:
    arn = {"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/pqh/dev/admin-token"}
    for logical in ("APIHandler", "ApiKeyAuth"):
        variables = packaged["Resources"][logical]["Properties"]["Environment"]["Variables"]
        assert variables["PQH_ADMIN_TOKEN_PARAMETER"] == "/pqh/dev/admin-token"
        assert "PQH_ADMIN_TOKEN" not in variables  # nothing a deploy would overwrite by hand
    readers = {
        logical
        for logical, statement in _walk_statements(packaged)
        if "ssm:GetParameter" in statement["Action"] and statement["Resource"] == [arn]
    }
    assert readers == {"ApiHandlerRole", "ApiKeyAuthRole"}
    ssm_actions = {a for _, s in _walk_statements(packaged) for a in s["Action"] if a.startswith("ssm:")}
    assert ssm_actions == {"ssm:GetParameter"}
