"""Each function's AWS calls, signed with keys that hold exactly its generated policy.

moto's IAM enforcement does the evaluation: every function (api_handler, the
authorizer, dispatcher, worker, dispatch_tick) acts as an IAM user whose only
policy is ``infra.iam.stage_policy(function, "pqh-dev")``; moto checks each
request's signature and evaluates its action on its resource ARN, and a denial
is recorded and fails the test. The gaps in moto are filled here, each with
what AWS does:

* moto evaluates DynamoDB requests on the resource ``*``; AWS on the table's
  ARN (``.../table/<name>/index/<index>`` for a Query of an index). The handler
  is given the ARN.
* moto evaluates SSM requests on ``*``; AWS on the parameter's ARN.
* moto evaluates GetQueueUrl on ``*`` (it looks for a queue URL, and the call
  names the queue); AWS on the named queue's ARN.
* moto names a batch call's action after the call (``sqs:DeleteMessageBatch``);
  AWS authorizes it as the single action (``sqs:DeleteMessage``).
* moto does not authorize Lambda at all; the real ``LambdaInvoker`` runs with a
  Lambda client whose Invoke is evaluated here with moto's policy evaluator on
  the target function's ARN, then recorded (the test runs the hand-off itself).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from chalice.app import Chalice
from chalice.local import LocalGatewayAuthorizer
from chalice.test import Client
from moto import mock_aws
from moto.core.authorization import enable_iam_authentication
from moto.dynamodb.responses import DynamoHandler
from moto.iam.access_control import IAMPolicy, IAMRequestBase, PermissionResult
from moto.sqs.responses import SQSResponse
from moto.ssm.responses import SimpleSystemManagerResponse

from chalicelib import aws, wiring
from chalicelib.adapters.lambda_ import LambdaInvoker
from chalicelib.domain import Handoff
from infra.iam import GRANTS, parameter_path, stage_admin_token_parameter, stage_policy
from infra.provision import provision
from local import moto_patches
from tests.functional.conftest import CLIENT_STAGE, ROOT, Clock, admin_token_in_ssm, check_aws_rules, stage_env

PREFIX = "pqh-dev"
ACCOUNT = "123456789012"
REGION = "us-east-1"
# AWS authorizes a batch call as its single action.
BATCH_ACTIONS = {
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "sqs:SendMessageBatch": "sqs:SendMessage",
}


@dataclass(frozen=True)
class Evaluation:
    function: str
    action: str
    resource: str
    allowed: bool


def _dynamo_resource(handler: Any) -> str:
    """The ARN AWS evaluates a DynamoDB request on: its table's, or its index's."""
    request = handler.body if isinstance(handler.body, dict) else {}
    tables = {str(request["TableName"])} if "TableName" in request else set()
    tables |= set(request.get("RequestItems", {}))
    for action in request.get("TransactItems", []):
        tables |= {str(part["TableName"]) for part in action.values()}
    if len(tables) != 1:
        return "*"  # several tables in one call: not evaluated here, and reported
    arn = f"arn:aws:dynamodb:{handler.region}:{handler.current_account}:table/{tables.pop()}"
    return arn + (f"/index/{request['IndexName']}" if "IndexName" in request else "")


def _sqs_resource(handler: Any) -> str:
    """GetQueueUrl names its queue instead of giving its URL: AWS evaluates it on that queue's ARN."""
    name = handler._get_param("QueueName")
    if name and not handler._get_param("QueueUrl"):
        return f"arn:aws:sqs:{handler.region}:{handler.current_account}:{name}"
    return str(ORIGINAL_SQS_RESOURCE(handler))


ORIGINAL_SQS_RESOURCE = SQSResponse._determine_resource


def _ssm_resource(handler: Any) -> str:
    """moto evaluates SSM requests on ``*``; AWS on the named parameter's ARN."""
    name = handler._get_param("Name")
    if not name:
        return "*"
    return f"arn:aws:ssm:{handler.region}:{handler.current_account}:parameter{parameter_path(str(name))}"


@dataclass
class IamWorld:
    client: Client
    clock: Clock
    keys: dict[str, tuple[str, str]]
    acting: list[str] = field(default_factory=lambda: ["test"])
    evaluations: list[Evaluation] = field(default_factory=list)
    handoffs: list[Handoff] = field(default_factory=list)
    dispatch_triggers: int = 0

    # --- who is calling ------------------------------------------------------

    @contextmanager
    def acting_as(self, function: str) -> Iterator[None]:
        """Run as ``function``: its keys in the environment, services rebuilt with clients that use them."""
        saved = (os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY"))
        self.acting.append(function)
        self._use(function)
        try:
            yield
        finally:
            self.acting.pop()
            os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = saved  # type: ignore[assignment]
            self._configure()

    def _use(self, function: str) -> None:
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = self.keys[function]
        self._configure()

    def _configure(self) -> None:
        wiring.configure(invoker_factory=self._invoker, clock=self.clock)

    def _invoker(self, settings: Any) -> LambdaInvoker:
        lambda_client = aws.client("lambda")
        lambda_client.meta.events.register("before-call.lambda.Invoke", self._invoke, unique_id="pqh-iam-invoke")
        return LambdaInvoker(lambda_client, settings.worker_function, settings.dispatcher_function)

    # --- Lambda: evaluated here, then recorded --------------------------------

    def _invoke(self, model: Any, params: dict[str, Any], **kwargs: Any) -> Any:
        name = params["url_path"].split("/functions/", 1)[1].split("/", 1)[0]
        arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
        function = self.acting[-1]
        policy = IAMPolicy(json.dumps(stage_policy(function, PREFIX, stage_admin_token_parameter("dev"))))
        allowed = policy.is_action_permitted("lambda:InvokeFunction", arn) == PermissionResult.PERMITTED
        self.evaluations.append(Evaluation(function, "lambda:InvokeFunction", arn, allowed))
        if not allowed:
            error = {"Error": {"Code": "AccessDeniedException", "Message": f"{function} may not invoke {arn}"}}
            return SimpleNamespace(status_code=403, headers={}, content=b"", text=""), {
                **error,
                "ResponseMetadata": {"HTTPStatusCode": 403},
            }
        if name == f"{PREFIX}-worker":
            self.handoffs.append(Handoff.from_payload(json.loads(params["body"])))
        else:
            self.dispatch_triggers += 1
        return SimpleNamespace(status_code=202, headers={}, content=b"", text=""), {
            "StatusCode": 202,
            "ResponseMetadata": {"HTTPStatusCode": 202},
        }

    # --- driving the functions ---------------------------------------------------

    def http(self, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None) -> Any:
        kwargs: dict[str, Any] = {"headers": {"Content-Type": "application/json", **(headers or {})}}
        if body is not None:
            kwargs["body"] = json.dumps(body)
        with self.acting_as("api_handler"):
            return getattr(self.client.http, method)(path, **kwargs)

    def invoke(self, function: str, payload: Any) -> Any:
        with self.acting_as(function):
            return self.client.lambda_.invoke(function, payload).payload

    def run_workers(self) -> list[Any]:
        handoffs, self.handoffs = self.handoffs, []
        return [self.invoke("worker", h.to_payload()) for h in handoffs]

    def tick(self) -> Any:
        event = self.client.events.generate_cw_event(source="aws.events", detail_type="x", detail={}, resources=[])
        return self.invoke("dispatch_tick", event)

    # --- what was evaluated ----------------------------------------------------------

    def denied(self) -> list[Evaluation]:
        return [e for e in self.evaluations if not e.allowed]

    def actions_of(self, function: str) -> set[str]:
        return {e.action for e in self.evaluations if e.function == function}


@contextmanager
def iam_world(monkeypatch: pytest.MonkeyPatch, app: Chalice, auth: str = "none") -> Iterator[IamWorld]:
    """moto with IAM enforcement on, one IAM user per function holding exactly its stage policy."""
    moto_patches.check_moto_version()  # the gaps filled here are in moto's private hooks
    for name, value in stage_env(auth).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PQH_TASK_SECONDS", "0")
    monkeypatch.delenv("AWS_SESSION_TOKEN")  # long-term user keys: a session token would name a role
    rules = check_aws_rules(monkeypatch)
    monkeypatch.setattr(DynamoHandler, "_determine_resource", _dynamo_resource, raising=False)
    monkeypatch.setattr(SQSResponse, "_determine_resource", _sqs_resource)
    monkeypatch.setattr(SimpleSystemManagerResponse, "_determine_resource", _ssm_resource, raising=False)
    evaluations: list[Evaluation] = []
    original_check = IAMRequestBase.check_action_permitted

    def check_action_permitted(self: Any, resource: str) -> None:
        self._action = BATCH_ACTIONS.get(self._action, self._action)
        function = self._access_key._owner_user_name.removeprefix(f"{PREFIX}-")
        try:
            original_check(self, resource)
        except Exception:
            evaluations.append(Evaluation(function, self._action, resource, False))
            raise
        evaluations.append(Evaluation(function, self._action, resource, resource != "*"))

    monkeypatch.setattr(IAMRequestBase, "check_action_permitted", check_action_permitted)
    with mock_aws():
        provision(PREFIX, aws.client("dynamodb"), aws.client("sqs"))
        # The admin token a test chose is where the stage keeps it: in its SSM parameter.
        if os.environ.get("PQH_ADMIN_TOKEN"):
            admin_token_in_ssm(monkeypatch, os.environ["PQH_ADMIN_TOKEN"])
        iam = boto3.client("iam", region_name=REGION)
        keys = {}
        for function in GRANTS:
            user = f"{PREFIX}-{function}"
            iam.create_user(UserName=user)
            iam.put_user_policy(
                UserName=user,
                PolicyName="stage",
                PolicyDocument=json.dumps(stage_policy(function, PREFIX, stage_admin_token_parameter("dev"))),
            )
            created = iam.create_access_key(UserName=user)["AccessKey"]
            keys[function] = (created["AccessKeyId"], created["SecretAccessKey"])
        client = Client(app, stage_name=CLIENT_STAGE, project_dir=str(ROOT))
        world = IamWorld(client, Clock(), keys, evaluations=evaluations)
        original_authorize = LocalGatewayAuthorizer.authorize

        def authorize(self: Any, *args: Any, **kwargs: Any) -> Any:
            with world.acting_as("api_key_auth"):
                return original_authorize(self, *args, **kwargs)

        monkeypatch.setattr(LocalGatewayAuthorizer, "authorize", authorize)
        world._configure()
        with client, enable_iam_authentication():
            yield world
    assert rules.violations == [], "calls AWS would refuse"
