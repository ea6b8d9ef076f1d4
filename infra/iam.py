"""Least-privilege IAM, defined once per function.

Each function gets only the actions it calls, on its own resources; no ``*``
action and no ``*`` resource. Rendered two ways:

* ``stage_policy``: name-scoped ARNs for ``chalice deploy`` (the files
  .chalice/policy-<stage>-<function>.json, written by ``python -m infra.iam``);
* ``template_policy``: CloudFormation references, used by infra.merge_template.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

LEVEL_QUEUES = [f"Level{level}Queue" for level in range(6)]
DEAD_LETTER_QUEUES = [f"Level{level}DeadLetterQueue" for level in range(6)]
# The stage's admin-token parameter (PQH_ADMIN_TOKEN_PARAMETER). Reading it also grants
# kms:Decrypt, only through SSM and only for this parameter (a SecureString is encrypted
# with the parameter's ARN as its encryption context). No parameter, no statement.
ADMIN_TOKEN = "parameter:admin_token"

# Chalice's function name -> [(actions, resources)]. A resource is a logical id of
# infra/resources.json, "<table id>/index/*" for a table's indexes, or
# "function:<name>" for one of this app's functions, or ADMIN_TOKEN.
GRANTS: dict[str, list[tuple[list[str], list[str]]]] = {
    "api_handler": [
        # Counters and weights; the top-users item and its candidates' counters (one GetItem, one BatchGetItem).
        (
            ["dynamodb:UpdateItem", "dynamodb:Query", "dynamodb:GetItem", "dynamodb:BatchGetItem"],
            ["UsageTable"],
        ),
        (["dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"], ["TasksTable"]),
        (["dynamodb:Query", "dynamodb:Scan"], ["TasksTable/index/*"]),  # Scan: the sparse running index, for /stats
        # Slots, backlog and API keys: POST /admin/keys puts a key's item, DELETE /admin/keys/{id} deletes it.
        (
            [
                "dynamodb:UpdateItem",
                "dynamodb:GetItem",
                "dynamodb:BatchGetItem",
                "dynamodb:PutItem",
                "dynamodb:DeleteItem",
            ],
            ["ControlTable"],
        ),
        (["sqs:SendMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"], LEVEL_QUEUES),
        (
            [
                "sqs:GetQueueUrl",
                "sqs:GetQueueAttributes",
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:PurgeQueue",
            ],
            DEAD_LETTER_QUEUES,
        ),
        (["lambda:InvokeFunction"], ["function:dispatcher"]),
        (["ssm:GetParameter"], [ADMIN_TOKEN]),  # the admin token (PQH_ADMIN_TOKEN_PARAMETER)
    ],
    "dispatcher": [
        (["dynamodb:UpdateItem", "dynamodb:BatchGetItem"], ["ControlTable"]),  # slots and backlog: one BatchGetItem
        (["lambda:InvokeFunction"], ["function:worker"]),
    ],
    "worker": [
        (["dynamodb:GetItem", "dynamodb:UpdateItem"], ["TasksTable", "ControlTable"]),
        # With backlog shards: every shard's record in one read, before a worker stops.
        (["dynamodb:BatchGetItem"], ["ControlTable"]),
        (["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueUrl"], LEVEL_QUEUES),
        (["sqs:SendMessage", "sqs:GetQueueUrl"], DEAD_LETTER_QUEUES),
        (["lambda:InvokeFunction"], ["function:dispatcher"]),
    ],
}
GRANTS["api_key_auth"] = [
    (["dynamodb:GetItem"], ["ControlTable"]),  # looks a key's hash up
    (["ssm:GetParameter"], [ADMIN_TOKEN]),  # or compares the admin token
]
# The tick is the dispatcher on a schedule, and it also re-sends long-queued messages.
GRANTS["dispatch_tick"] = [
    *GRANTS["dispatcher"],
    (["dynamodb:UpdateItem"], ["TasksTable"]),
    (["dynamodb:Query"], ["TasksTable/index/*"]),
    (["sqs:SendMessage", "sqs:GetQueueUrl"], LEVEL_QUEUES),
]

# Deployed function names: Chalice's `<app>-<stage>-<name>`; in the packaged
# template the merge template sets `<stack>-<suffix>` to match.
FUNCTION_SUFFIX = {
    "api_handler": "api",
    "dispatcher": "dispatcher",
    "dispatch_tick": "dispatch-tick",
    "worker": "worker",
    "api_key_auth": "api-key-auth",
}
TABLE_SUFFIX = {"TasksTable": "tasks", "UsageTable": "usage", "ControlTable": "control"}
ARN_BASE = "arn:${AWS::Partition}"
REGION_ACCOUNT = "${AWS::Region}:${AWS::AccountId}"
ROOT = Path(__file__).resolve().parent.parent


def _statements(function: str, arn: Any, log_groups: Any, parameter_arn: Any, kms_keys: Any) -> dict[str, Any]:
    statements: list[dict[str, Any]] = [
        {
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": log_groups,
        }
    ]
    for actions, resources in GRANTS[function]:
        if resources == [ADMIN_TOKEN]:
            if parameter_arn is None:
                continue
            statements.append({"Effect": "Allow", "Action": actions, "Resource": [parameter_arn]})
            statements.append(
                {
                    "Effect": "Allow",
                    "Action": ["kms:Decrypt"],
                    "Resource": [kms_keys],
                    "Condition": {
                        "StringLike": {
                            "kms:ViaService": "ssm.*.amazonaws.com",
                            "kms:EncryptionContext:PARAMETER_ARN": parameter_arn,
                        }
                    },
                }
            )
            continue
        statements.append({"Effect": "Allow", "Action": actions, "Resource": [arn(r) for r in resources]})
    return {"Version": "2012-10-17", "Statement": statements}


def parameter_path(name: str) -> str:
    """The part of a parameter's ARN after ``parameter``: ``/a/b`` for ``/a/b``, ``/x`` for ``x``."""
    return name if name.startswith("/") else "/" + name


def stage_policy(function: str, prefix: str, admin_token_parameter: str = "") -> dict[str, Any]:
    """Name-scoped policy for `chalice deploy` of a stage whose resources start with ``prefix``."""

    def arn(resource: str) -> str:
        if resource.startswith("function:"):
            name = resource.split(":", 1)[1]
            return f"arn:aws:lambda:*:*:function:{prefix}-{name}"
        table, _, index = resource.partition("/")
        if table in TABLE_SUFFIX:
            return f"arn:aws:dynamodb:*:*:table/{prefix}-{TABLE_SUFFIX[table]}" + (f"/{index}" if index else "")
        if resource.endswith("DeadLetterQueue"):
            level = resource.removeprefix("Level").removesuffix("DeadLetterQueue")
            return f"arn:aws:sqs:*:*:{prefix}-level-{level}-dlq"
        level = resource.removeprefix("Level").removesuffix("Queue")
        return f"arn:aws:sqs:*:*:{prefix}-level-{level}"

    parameter = f"arn:aws:ssm:*:*:parameter{parameter_path(admin_token_parameter)}" if admin_token_parameter else None
    return _statements(
        function, arn, [f"arn:aws:logs:*:*:log-group:/aws/lambda/{prefix}*"], parameter, "arn:aws:kms:*:*:key/*"
    )


def template_policy(function: str, admin_token_parameter: str = "") -> dict[str, Any]:
    """The same policy with CloudFormation references to the stack's own resources."""

    def arn(resource: str) -> Any:
        if resource.startswith("function:"):
            name = FUNCTION_SUFFIX[resource.split(":", 1)[1]]
            return {"Fn::Sub": f"{ARN_BASE}:lambda:{REGION_ACCOUNT}:function:${{AWS::StackName}}-{name}"}
        table, _, index = resource.partition("/")
        if index:
            return {"Fn::Sub": f"${{{table}.Arn}}/{index}"}
        return {"Fn::GetAtt": [resource, "Arn"]}

    log_groups = {"Fn::Sub": f"{ARN_BASE}:logs:{REGION_ACCOUNT}:log-group:/aws/lambda/${{AWS::StackName}}-*"}
    parameter = None
    if admin_token_parameter:
        parameter = {"Fn::Sub": f"{ARN_BASE}:ssm:{REGION_ACCOUNT}:parameter{parameter_path(admin_token_parameter)}"}
    kms_keys = {"Fn::Sub": f"{ARN_BASE}:kms:{REGION_ACCOUNT}:key/*"}
    return _statements(function, arn, [log_groups], parameter, kms_keys)


def stage_admin_token_parameter(stage: str) -> str:
    """The PQH_ADMIN_TOKEN_PARAMETER a stage deploys with (.chalice/config.json; '' if unset)."""
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    return str(config["stages"][stage].get("environment_variables", {}).get("PQH_ADMIN_TOKEN_PARAMETER", ""))


def policy_path(stage: str, function: str) -> Path:
    return ROOT / ".chalice" / f"policy-{stage}-{function}.json"


def write_stage_policies(stage: str, prefix: str) -> list[Path]:
    written = []
    for function in GRANTS:
        path = policy_path(stage, function)
        policy = stage_policy(function, prefix, stage_admin_token_parameter(stage))
        path.write_text(json.dumps(policy, indent=2) + "\n")
        written.append(path)
    return written


def stage_auth(stage: str) -> str:
    """The PQH_AUTH a stage deploys with (.chalice/config.json; none if unset)."""
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    return str(config["stages"][stage].get("environment_variables", {}).get("PQH_AUTH", "none"))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--auth"]:
        print(stage_auth(sys.argv[2] if len(sys.argv) > 2 else "dev"))
        sys.exit(0)
    stage = sys.argv[1] if len(sys.argv) > 1 else "dev"
    for written_path in write_stage_policies(stage, f"pqh-{stage}"):
        print(written_path.relative_to(ROOT))
