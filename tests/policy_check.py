"""Every AWS call a function makes in the functional suite, evaluated against that function's generated policy.

A botocore ``before-call`` hook on every client the code builds: it names the IAM
action (a batch call is authorized as its single action, as on AWS) and the
resource ARN(s) of the call (the table, or the index of a Query; the queue; the
invoked function), and evaluates them with moto's policy evaluator against
``infra.iam.stage_policy(<function>, "pqh-dev")``. The function is the one the
test client is running: an HTTP request is ``api_handler`` (``api_key_auth``
while the authorizer runs), ``client.lambda_.invoke(name)`` is ``name``. Calls
the test makes itself are not evaluated. A denied call is recorded and refused
(403 AccessDenied, as AWS would), and the harness fails the test.

tests/functional/test_iam.py checks the same policies with moto's own IAM
enforcement (signed requests, per-function keys) over every route and function.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
from chalice.local import LocalGatewayAuthorizer
from chalice.test import TestHTTPClient, TestLambdaClient
from moto.iam.access_control import IAMPolicy, PermissionResult

from infra.iam import GRANTS, parameter_path, stage_admin_token_parameter, stage_policy

PREFIX = "pqh-dev"
ACCOUNT = "123456789012"
TEST = "test"  # the test's own calls: not a function, not evaluated
BATCH_ACTIONS = {
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
    "SendMessageBatch": "SendMessage",
    "Invoke": "InvokeFunction",
}


@dataclass(frozen=True)
class Denial:
    function: str
    action: str
    resource: str


def resources_of(service: str, operation: str, params: dict[str, Any], region: str) -> list[str]:
    """The ARNs AWS evaluates a call on."""
    if service == "lambda":
        name = unquote(params["url_path"].split("/functions/", 1)[1].split("/", 1)[0])
        return [name if name.startswith("arn:") else f"arn:aws:lambda:{region}:{ACCOUNT}:function:{name}"]
    try:
        request = json.loads(params.get("body") or b"{}")
    except ValueError:
        request = {}
    if service == "sqs":
        if "QueueUrl" in request:
            _, account, name = urlparse(request["QueueUrl"]).path.split("/")
            return [f"arn:aws:sqs:{region}:{account}:{name}"]
        if "QueueName" in request:
            return [f"arn:aws:sqs:{region}:{ACCOUNT}:{request['QueueName']}"]
    if service == "dynamodb":
        tables = [str(request["TableName"])] if "TableName" in request else list(request.get("RequestItems", {}))
        tables += [str(part["TableName"]) for action in request.get("TransactItems", []) for part in action.values()]
        index = f"/index/{request['IndexName']}" if "IndexName" in request else ""
        return [f"arn:aws:dynamodb:{region}:{ACCOUNT}:table/{table}{index}" for table in tables]
    if service == "ssm" and "Name" in request:
        return [f"arn:aws:ssm:{region}:{ACCOUNT}:parameter{parameter_path(str(request['Name']))}"]
    return ["*"]


@dataclass
class PolicyCheck:
    """Which function is running, and every call it made that its policy denies."""

    denials: list[Denial] = field(default_factory=list)
    evaluated: int = 0
    _acting: list[str] = field(default_factory=lambda: [TEST])
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def function(self) -> str:
        return self._acting[-1]

    @contextmanager
    def acting_as(self, function: str) -> Iterator[None]:
        # One list for every thread: the test client's requests from several threads
        # are all api_handler, and a function's own threads (the worker's prefetch)
        # run while it does.
        with self._lock:
            self._acting.append(function)
        try:
            yield
        finally:
            with self._lock:
                self._acting.remove(function)

    def register(self, client: Any) -> None:
        client.meta.events.register("before-call.*.*", self.check, unique_id="pqh-policy-check")

    def check(self, model: Any, params: dict[str, Any], **kwargs: Any) -> Any:
        function = self.function
        if function == TEST:
            return None
        service = model.service_model.endpoint_prefix
        action = f"{service}:{BATCH_ACTIONS.get(model.name, model.name)}"
        region = params.get("context", {}).get("client_region") or "us-east-1"
        policy = IAMPolicy(json.dumps(stage_policy(function, PREFIX, stage_admin_token_parameter("dev"))))
        denied = [
            Denial(function, action, arn)
            for arn in resources_of(service, model.name, params, region)
            if policy.is_action_permitted(action, arn) != PermissionResult.PERMITTED
        ]
        self.evaluated += 1
        if not denied:
            return None
        self.denials += denied
        message = f"{function} is not authorized to perform {action} on {denied[0].resource}"
        return SimpleNamespace(status_code=403, headers={}, content=b"", text=""), {
            "Error": {"Code": "AccessDeniedException", "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        }


def install(monkeypatch: pytest.MonkeyPatch, check: PolicyCheck) -> None:
    """Attribute each call to the function the test client is running."""
    request, invoke, authorize = TestHTTPClient.request, TestLambdaClient.invoke, LocalGatewayAuthorizer.authorize

    def as_api(self: Any, *args: Any, **kwargs: Any) -> Any:
        with check.acting_as("api_handler"):
            return request(self, *args, **kwargs)

    def as_function(self: Any, function_name: str, *args: Any, **kwargs: Any) -> Any:
        assert function_name in GRANTS, f"{function_name} has no grants in infra/iam.py"
        with check.acting_as(function_name):
            return invoke(self, function_name, *args, **kwargs)

    def as_authorizer(self: Any, *args: Any, **kwargs: Any) -> Any:
        with check.acting_as("api_key_auth"):
            return authorize(self, *args, **kwargs)

    monkeypatch.setattr(TestHTTPClient, "request", as_api)
    monkeypatch.setattr(TestLambdaClient, "invoke", as_function)
    monkeypatch.setattr(LocalGatewayAuthorizer, "authorize", as_authorizer)


class CheckedInvoker:
    """An invoker whose hand-offs are evaluated as the Lambda Invoke they stand for."""

    def __init__(self, inner: Any, check: PolicyCheck, worker: str, dispatcher: str) -> None:
        self.inner, self.check = inner, check
        self.worker, self.dispatcher = worker, dispatcher

    def _invoke(self, function_name: str) -> None:
        function = self.check.function
        if function == TEST:
            return
        arn = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:{function_name}"
        policy = IAMPolicy(json.dumps(stage_policy(function, PREFIX, stage_admin_token_parameter("dev"))))
        self.check.evaluated += 1
        if policy.is_action_permitted("lambda:InvokeFunction", arn) != PermissionResult.PERMITTED:
            self.check.denials.append(Denial(function, "lambda:InvokeFunction", arn))

    def start_worker(self, handoff: Any) -> None:
        self._invoke(self.worker)
        self.inner.start_worker(handoff)

    def trigger_dispatch(self) -> None:
        self._invoke(self.dispatcher)
        self.inner.trigger_dispatch()
