"""Print the template `chalice package --merge-template` merges into Chalice's own.

It adds the tables and queues of infra/resources.json, names the functions after
the stack, points their PQH_* variables at the stack's resources, and gives each
function's role the least-privilege policy of infra/iam.py.

    python -m infra.merge_template > build/merge-template.json
"""

from __future__ import annotations

import json
from typing import Any

from infra.iam import FUNCTION_SUFFIX, GRANTS, template_policy
from infra.provision import load_template

# Chalice's logical ids for each function and its role.
LOGICAL_IDS = {
    "api_handler": ("APIHandler", "ApiHandlerRole"),
    "dispatcher": ("Dispatcher", "DispatcherRole"),
    "dispatch_tick": ("DispatchTick", "DispatchTickRole"),
    "worker": ("Worker", "WorkerRole"),
    "api_key_auth": ("ApiKeyAuth", "ApiKeyAuthRole"),
}


def _function_name(function: str) -> dict[str, str]:
    return {"Fn::Sub": f"${{AWS::StackName}}-{FUNCTION_SUFFIX[function]}"}


def merge_template() -> dict[str, Any]:
    infra = load_template()
    resources: dict[str, Any] = dict(infra["Resources"])
    variables = {
        "PQH_TASKS_TABLE": {"Ref": "TasksTable"},
        "PQH_USAGE_TABLE": {"Ref": "UsageTable"},
        "PQH_CONTROL_TABLE": {"Ref": "ControlTable"},
        "PQH_QUEUE_PREFIX": {"Ref": "AWS::StackName"},
        "PQH_WORKER_FUNCTION": _function_name("worker"),
        "PQH_DISPATCHER_FUNCTION": _function_name("dispatcher"),
    }
    for function in GRANTS:
        logical, role = LOGICAL_IDS[function]
        properties: dict[str, Any] = {"FunctionName": _function_name(function), "Environment": {"Variables": variables}}
        if function == "worker":
            # A retried worker invocation would find its slot handed on and run nothing:
            # do not retry it (the dispatcher starts a fresh one when needed).
            properties["EventInvokeConfig"] = {"MaximumRetryAttempts": 0}
        resources[logical] = {"Properties": properties}
        resources[role] = {
            "Properties": {"Policies": [{"PolicyName": f"{role}Policy", "PolicyDocument": template_policy(function)}]}
        }
    return {"Resources": resources, "Outputs": infra.get("Outputs", {})}


if __name__ == "__main__":
    print(json.dumps(merge_template(), indent=2))
