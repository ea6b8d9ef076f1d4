"""moto.mock_aws plus chalice.test.Client: every route, the schedule and the Lambdas."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client
from moto import mock_aws

from app import app
from chalicelib import aws, wiring
from chalicelib.adapters.memory import RecordingInvoker
from infra.provision import provision
from local import moto_patches
from tests.aws_rules import AwsRules
from tests.policy_check import CheckedInvoker, PolicyCheck, install

ROOT = Path(__file__).resolve().parents[2]
STAGE = "dev"
# The test client runs a stage the config does not name, so it never patches the
# environment per call: each test sets the dev stage's variables itself (and
# chooses PQH_AUTH, which the dev stage deploys as api_key).
CLIENT_STAGE = "test"


def stage_env(auth: str = "none") -> dict[str, str]:
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    env = dict(config.get("environment_variables", {}))
    env.update(config["stages"][STAGE].get("environment_variables", {}))
    env["PQH_AUTH"] = auth
    return env


def admin_token_in_ssm(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    """The stage's admin-token parameter holds ``token`` (in moto), and the stage names it: as deployed.

    Put as the account, as an operator does: the functions' roles may only read it.
    Overwrites a value already there (a rotation).
    """
    from moto.ssm.models import ssm_backends

    name = stage_env()["PQH_ADMIN_TOKEN_PARAMETER"]
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    ssm_backends["123456789012"][region].put_parameter(
        name, "", token, "SecureString", "", "", True, [], "text", None, None
    )
    monkeypatch.setenv("PQH_ADMIN_TOKEN_PARAMETER", name)


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    client: Client
    invoker: RecordingInvoker
    clock: Clock
    rules: AwsRules
    policy: PolicyCheck

    def submit(self, user_id: str = "user_1", x: Any = "foo") -> Any:
        return self.client.http.post(
            "/task", headers={"Content-Type": "application/json"}, body=json.dumps({"x": x, "user_id": user_id})
        )

    def dispatch(self) -> dict[str, Any]:
        return self.client.lambda_.invoke("dispatcher", {}).payload  # type: ignore[no-any-return]

    def run_workers(self) -> list[dict[str, Any]]:
        """Invoke the worker Lambda for every slot the dispatcher handed out."""
        return [self.client.lambda_.invoke("worker", h.to_payload()).payload for h in self.invoker.take_handoffs()]

    def outcomes(self) -> list[str]:
        return [outcome for report in self.run_workers() for outcome in report["outcomes"]]

    def result(self, task_id: str) -> Any:
        return self.client.http.get(f"/result/{task_id}")

    def queue_depths(self) -> list[int]:
        sqs = aws.client("sqs")
        depths = []
        for level in range(6):
            url = sqs.get_queue_url(QueueName=f"pqh-dev-level-{level}")["QueueUrl"]
            attrs = sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
            )["Attributes"]
            depths.append(
                int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])
            )
        return depths

    def usage_items(self) -> int:
        return int(aws.client("dynamodb").scan(TableName="pqh-dev-usage", Select="COUNT")["Count"])

    def task_items(self) -> int:
        return int(aws.client("dynamodb").scan(TableName="pqh-dev-tasks", Select="COUNT")["Count"])


def instrument_clients(monkeypatch: pytest.MonkeyPatch, *hooks: AwsRules | PolicyCheck) -> None:
    """Every client the code builds gets the hooks (each registers itself once per client)."""
    build = aws.client

    def client(service: str) -> Any:
        made = build(service)
        for hook in hooks:
            hook.register(made)
        return made

    monkeypatch.setattr(aws, "client", client)


def check_aws_rules(monkeypatch: pytest.MonkeyPatch) -> AwsRules:
    """Every client the code builds checks AWS's documented parameter rules (tests/aws_rules.py)."""
    rules = AwsRules()
    instrument_clients(monkeypatch, rules)
    return rules


def check_aws_rules_and_policies(monkeypatch: pytest.MonkeyPatch) -> tuple[AwsRules, PolicyCheck]:
    """AWS's parameter rules, and each function's calls against its own IAM policy (tests/policy_check.py)."""
    rules, policy = AwsRules(), PolicyCheck()
    instrument_clients(monkeypatch, rules, policy)
    install(monkeypatch, policy)
    return rules, policy


def checked(invoker: RecordingInvoker, policy: PolicyCheck) -> Any:
    """An invoker factory whose hand-offs are evaluated as Lambda Invokes."""
    return lambda settings: CheckedInvoker(invoker, policy, settings.worker_function, settings.dispatcher_function)


@pytest.fixture
def atomic_moto_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """For a test that writes from several threads at once: moto's writes are not atomic across threads, DynamoDB's are.

    Every other functional test runs on stock moto (local/moto_patches.py).
    """
    moto_patches.atomic_writes(monkeypatch.setattr)


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    # Set the stage's variables up front so the test client's per-call patching is
    # a no-op and requests from several threads see the same environment.
    for name, value in stage_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PQH_TASK_SECONDS", "0")
    # Tests read /stats right after what they change; the cache has tests of its own (test_stats_cost.py).
    monkeypatch.setenv("PQH_STATS_CACHE_SECONDS", "0")
    # No admin token unless a test puts one in SSM (admin_token_in_ssm): a parameter named
    # and not there is a misconfiguration (500).
    monkeypatch.delenv("PQH_ADMIN_TOKEN_PARAMETER")
    invoker = RecordingInvoker()
    clock = Clock()
    rules, policy = check_aws_rules_and_policies(monkeypatch)
    with mock_aws():
        provision("pqh-dev", aws.client("dynamodb"), aws.client("sqs"))
        wiring.configure(invoker_factory=checked(invoker, policy), clock=clock)
        with Client(app, stage_name=CLIENT_STAGE, project_dir=str(ROOT)) as client:
            yield Harness(client, invoker, clock, rules, policy)
    assert "AWS_ENDPOINT_URL" not in os.environ
    assert rules.violations == [], "calls AWS would refuse"
    assert policy.denials == [], "calls a function's IAM policy denies"
