"""Each function's IAM policy allows exactly what it calls: recorded, not assumed."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from chalicelib import aws
from infra.iam import GRANTS
from tests.functional.conftest import Harness

IAM_ACTION = {"ChangeMessageVisibilityBatch": "ChangeMessageVisibility", "DeleteMessageBatch": "DeleteMessage"}
PREFIX = {"dynamodb": "dynamodb", "sqs": "sqs", "lambda": "lambda"}


def granted(function: str) -> set[str]:
    return {action for actions, _ in GRANTS[function] for action in actions}


def test_every_call_a_function_makes_is_granted_to_it(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQH_ADMIN_TOKEN", "t")
    monkeypatch.setenv("PQH_TASK_FUNCTION", "chalicelib.tasks.fails_on_poison")
    admin = {"Authorization": "Bearer t"}
    calls: dict[str, set[str]] = defaultdict(set)
    current = {"function": "test-setup"}

    def record(model: Any, **kwargs: Any) -> None:
        service = model.service_model.endpoint_prefix
        operation = IAM_ACTION.get(model.name, model.name)
        calls[current["function"]].add(f"{PREFIX.get(service, service)}:{operation}")

    for service in ("dynamodb", "sqs"):
        aws.client(service).meta.events.register("before-call.*.*", record)

    class RecordingInvoker:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            def call(*args: Any) -> Any:
                calls[current["function"]].add("lambda:InvokeFunction")
                return getattr(self.inner, name)(*args)

            return call

    svc_invoker = harness.invoker
    from chalicelib import wiring

    wiring.configure(invoker_factory=lambda settings: RecordingInvoker(svc_invoker), clock=harness.clock)

    current["function"] = "api_handler"
    task_id = harness.submit("u", 1).json_body["task_id"]
    harness.submit("v", 1)  # a second user at the same level: the worker samples both, gives one back
    harness.submit("w", "poison")  # fails: the worker dead-letters it
    harness.result(task_id)
    harness.client.http.get("/result/00000000-0000-4000-8000-000000000000")
    current["function"] = "dispatcher"
    harness.dispatch()
    current["function"] = "worker"
    from chalicelib.services import Services

    # As if a task were counted while the worker stopped: it nudges the dispatcher.
    monkeypatch.setattr(Services, "_anything_counted", lambda self: True)
    for handoff in svc_invoker.take_handoffs():
        harness.client.lambda_.invoke("worker", handoff.to_payload())
    current["function"] = "dispatch_tick"
    event = harness.client.events.generate_cw_event(source="aws.events", detail_type="x", detail={}, resources=[])
    current["function"] = "api_handler"
    harness.submit("u", 2)
    current["function"] = "dispatch_tick"
    harness.client.lambda_.invoke("dispatch_tick", event)
    current["function"] = "api_handler"
    assert harness.client.http.get("/stats", headers=admin).status_code == 200
    assert harness.client.http.get("/admin/users/u", headers=admin).status_code == 200
    assert harness.client.http.get("/admin/dead-letters/0", headers=admin).json_body["dead_letters"] == 1
    assert harness.client.http.post("/admin/dead-letters/0/redrive", headers=admin).json_body["redriven"] == 1
    assert harness.client.http.delete("/admin/dead-letters/0", headers=admin).status_code == 200

    for function in ("api_handler", "dispatcher", "worker"):
        assert calls[function], function
        missing = calls[function] - granted(function)
        assert not missing, f"{function} calls {missing} without a grant"
    assert calls["dispatch_tick"] <= granted("dispatch_tick")
    # No grant goes unused (least privilege), except queue URL lookups cached by earlier
    # calls and the submit's clean-up when SQS refuses a message (DeleteItem).
    for function in ("api_handler", "dispatcher", "worker"):
        assert granted(function) - calls[function] <= {"sqs:GetQueueUrl", "dynamodb:DeleteItem"}, function
