"""Print the template `chalice package --merge-template` merges into Chalice's own.

It adds the tables and queues of infra/resources.json, names the functions after
the stack, points their PQH_* variables at the stack's resources, and gives each
function's role the least-privilege policy of infra/iam.py. It also sets the
limits of the stage: throttling of the API, reserved concurrency of the
background functions, and gateway responses that answer API Gateway's own
refusals in the routes' ``{"error", "message"}`` shape (chalicelib/gateway.py).
The CloudWatch alarms and dashboard come from infra/monitoring.py.

    python -m infra.merge_template [stage] > build/merge-template.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

from chalicelib import gateway
from infra.iam import FUNCTION_SUFFIX, GRANTS, ROOT, stage_admin_token_parameter, template_policy
from infra.monitoring import monitoring
from infra.provision import load_template

# Chalice's logical ids for each function and its role.
LOGICAL_IDS = {
    "api_handler": ("APIHandler", "ApiHandlerRole"),
    "dispatcher": ("Dispatcher", "DispatcherRole"),
    "dispatch_tick": ("DispatchTick", "DispatchTickRole"),
    "worker": ("Worker", "WorkerRole"),
    "api_key_auth": ("ApiKeyAuth", "ApiKeyAuthRole"),
}


# The stage's throttle, for all routes and callers together: steady requests per
# second and the burst above it. Over it, API Gateway answers 429 (DEFAULT_4XX below).
STAGE_RATE_LIMIT = 50
STAGE_BURST_LIMIT = 100
# Dispatcher passes need no lock (a slot is claimed with a conditional write); two
# at a time at most: one running and one arriving. Nudges beyond that are throttled
# and wait in Lambda's queue of asynchronous events, by default for up to six hours
# and retried twice on an error: a burst of submits below capacity would leave
# hours of passes, each reading every slot. A nudge not run within a minute is
# dropped instead (AWS's shortest age); the tick makes a pass every minute anyway.
DISPATCHER_CONCURRENCY = 2
DISPATCHER_EVENT_AGE_SECONDS = 60
TICK_CONCURRENCY = 1


def worker_concurrency(capacity: int) -> int:
    """A worker per slot, plus the one it hands over to (they overlap briefly), plus one spare."""
    return 2 * capacity + 1


def stage_capacity(stage: str) -> int:
    """The PQH_CAPACITY a stage deploys with (.chalice/config.json; 1 if unset, as in the settings)."""
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    return int(config["stages"][stage].get("environment_variables", {}).get("PQH_CAPACITY", "1"))


def gateway_responses() -> dict[str, Any]:
    """API Gateway's own answers (no credential, a denied key, no route, throttled) as {error, message}.

    The Serverless::Api's GatewayResponses: SAM writes them into the API definition,
    so each deployment of the stage carries them (a separate GatewayResponse
    resource takes effect only at the next deployment).
    """
    answers: dict[str, tuple[int | None, str]] = {
        kind: (answer.status, answer.body().decode()) for kind, answer in gateway.ANSWERS.items()
    }
    answers["THROTTLED"] = (
        429,
        '{"error": "throttled", "message": "the API is over its request rate (the stage throttle); retry shortly"}',
    )
    # Any other refusal keeps its status and message; messageString is already a quoted JSON string.
    answers["DEFAULT_4XX"] = (None, '{"error": "bad_request", "message": $context.error.messageString}')
    answers["DEFAULT_5XX"] = (None, '{"error": "gateway_error", "message": $context.error.messageString}')
    responses: dict[str, Any] = {}
    for kind, (status, template) in answers.items():
        response: dict[str, Any] = {
            "ResponseTemplates": {"application/json": template},
            "ResponseParameters": {"Headers": {"Content-Type": "'application/json'"}},
        }
        if status is not None:
            response["StatusCode"] = str(status)
        responses[kind] = response
    return responses


def _function_name(function: str) -> dict[str, str]:
    return {"Fn::Sub": f"${{AWS::StackName}}-{FUNCTION_SUFFIX[function]}"}


def merge_template(stage: str = "dev") -> dict[str, Any]:
    infra = load_template()
    resources: dict[str, Any] = dict(infra["Resources"])
    resources["RestAPI"] = {
        "Properties": {
            # The API's name is the stack's: the alarms and the dashboard find its metrics by it
            # (ApiName), and two stages in one account do not share one name.
            "Name": {"Ref": "AWS::StackName"},
            "GatewayResponses": gateway_responses(),
            "MethodSettings": [
                {
                    "ResourcePath": "/*",
                    "HttpMethod": "*",
                    "ThrottlingRateLimit": STAGE_RATE_LIMIT,
                    "ThrottlingBurstLimit": STAGE_BURST_LIMIT,
                }
            ],
        }
    }
    reserved = {
        "worker": worker_concurrency(stage_capacity(stage)),
        "dispatcher": DISPATCHER_CONCURRENCY,
        "dispatch_tick": TICK_CONCURRENCY,
    }
    variables = {
        "PQH_TASKS_TABLE": {"Ref": "TasksTable"},
        "PQH_USAGE_TABLE": {"Ref": "UsageTable"},
        "PQH_CONTROL_TABLE": {"Ref": "ControlTable"},
        "PQH_QUEUE_PREFIX": {"Ref": "AWS::StackName"},
        "PQH_WORKER_FUNCTION": _function_name("worker"),
        "PQH_DISPATCHER_FUNCTION": _function_name("dispatcher"),
    }
    parameter = stage_admin_token_parameter(stage)
    for function in GRANTS:
        logical, role = LOGICAL_IDS[function]
        properties: dict[str, Any] = {"FunctionName": _function_name(function), "Environment": {"Variables": variables}}
        if function == "worker":
            # A retried worker invocation would find its slot handed on and run nothing:
            # do not retry it (the dispatcher starts a fresh one when needed).
            properties["EventInvokeConfig"] = {"MaximumRetryAttempts": 0}
        if function == "dispatcher":
            properties["EventInvokeConfig"] = {
                "MaximumEventAgeInSeconds": DISPATCHER_EVENT_AGE_SECONDS,
                "MaximumRetryAttempts": 0,
            }
        if function in reserved:
            properties["ReservedConcurrentExecutions"] = reserved[function]
        resources[logical] = {"Properties": properties}
        resources[role] = {
            "Properties": {
                "Policies": [{"PolicyName": f"{role}Policy", "PolicyDocument": template_policy(function, parameter)}]
            }
        }
    watched = monitoring(stage)
    resources.update(watched["Resources"])
    return {
        "Parameters": watched["Parameters"],
        "Conditions": watched["Conditions"],
        "Resources": resources,
        "Outputs": infra.get("Outputs", {}),
    }


if __name__ == "__main__":
    print(json.dumps(merge_template(sys.argv[1] if len(sys.argv) > 1 else "dev"), indent=2))
