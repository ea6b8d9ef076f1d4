"""Create (or delete) the resources of infra/resources.json on any endpoint.

On AWS the same file is deployed by CloudFormation (see the README); here its
tables and queues are created with plain API calls, so a moto server, LocalStack
or a moto mock gets exactly what AWS gets. The prefix stands for the stack name.

    python -m infra.provision --prefix pqh-local          # create
    python -m infra.provision --prefix pqh-local --delete # delete
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

TEMPLATE = Path(__file__).with_name("resources.json")


def load_template() -> dict[str, Any]:
    return json.loads(TEMPLATE.read_text())  # type: ignore[no-any-return]


def _resolve(value: Any, prefix: str, arns: dict[str, str]) -> Any:
    """Resolve the few intrinsic functions the template uses."""
    if isinstance(value, dict):
        if set(value) == {"Fn::Sub"}:
            return str(value["Fn::Sub"]).replace("${AWS::StackName}", prefix)
        if set(value) == {"Fn::GetAtt"}:
            logical, attribute = value["Fn::GetAtt"]
            if attribute != "Arn":
                raise ValueError(f"unsupported Fn::GetAtt {value}")
            return arns[logical]
        return {key: _resolve(item, prefix, arns) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, prefix, arns) for item in value]
    return value


def _create_table(dynamodb: Any, props: dict[str, Any]) -> str:
    name = props["TableName"]
    with contextlib.suppress(dynamodb.exceptions.ResourceInUseException):  # exists: idempotent
        dynamodb.create_table(
            TableName=name,
            AttributeDefinitions=props["AttributeDefinitions"],
            KeySchema=props["KeySchema"],
            BillingMode=props.get("BillingMode", "PAY_PER_REQUEST"),
            **{key: props[key] for key in ("GlobalSecondaryIndexes",) if key in props},
        )
    dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    ttl = props.get("TimeToLiveSpecification")
    if ttl:
        current = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        if current.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            try:
                dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
            except ClientError as exc:
                # dynalite has no TTL. Nothing depends on TTL deleting an item:
                # every read compares the expiry attribute with now.
                if exc.response.get("Error", {}).get("Code") != "UnknownOperationException":
                    raise
    return str(name)


def _create_queue(sqs: Any, props: dict[str, Any]) -> tuple[str, str]:
    attributes = {
        key: json.dumps(value)
        if isinstance(value, dict)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
        for key, value in props.items()
        if key != "QueueName"
    }
    url = sqs.create_queue(QueueName=props["QueueName"], Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def provision(prefix: str, dynamodb: Any, sqs: Any) -> dict[str, str]:
    """Create every table and queue for ``prefix``; return logical id -> name or URL."""
    resources = load_template()["Resources"]
    created: dict[str, str] = {}
    arns: dict[str, str] = {}
    # Dead-letter queues first: the main queues' redrive policies name their ARNs.
    order = sorted(resources, key=lambda logical: "DeadLetter" not in logical)
    for logical in order:
        resource = resources[logical]
        props = _resolve(resource["Properties"], prefix, arns)
        if resource["Type"] == "AWS::DynamoDB::Table":
            created[logical] = _create_table(dynamodb, props)
        elif resource["Type"] == "AWS::SQS::Queue":
            created[logical], arns[logical] = _create_queue(sqs, props)
        else:
            raise ValueError(f"provisioner does not know {resource['Type']} ({logical})")
    return created


def teardown(prefix: str, dynamodb: Any, sqs: Any) -> None:
    """Delete what ``provision`` created for ``prefix`` (end-to-end runs clean up)."""
    for resource in load_template()["Resources"].values():
        props = resource["Properties"]
        try:
            if resource["Type"] == "AWS::DynamoDB::Table":
                dynamodb.delete_table(TableName=_resolve(props["TableName"], prefix, {}))
            else:
                name = _resolve(props["QueueName"], prefix, {})
                sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=name)["QueueUrl"])
        except Exception:  # already gone
            pass


def settings_env(prefix: str) -> dict[str, str]:
    """The PQH_* resource names that match ``provision(prefix)``."""
    return {
        "PQH_TASKS_TABLE": f"{prefix}-tasks",
        "PQH_USAGE_TABLE": f"{prefix}-usage",
        "PQH_CONTROL_TABLE": f"{prefix}-control",
        "PQH_QUEUE_PREFIX": prefix,
    }


def main() -> None:
    import boto3

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", required=True, help="resource prefix (the stack name on AWS)")
    parser.add_argument("--delete", action="store_true", help="delete the resources instead")
    args = parser.parse_args()
    dynamodb, sqs = boto3.client("dynamodb"), boto3.client("sqs")
    if args.delete:
        teardown(args.prefix, dynamodb, sqs)
        print(f"deleted the resources of {args.prefix}")
    else:
        for logical, name in provision(args.prefix, dynamodb, sqs).items():
            print(f"{logical}: {name}")


if __name__ == "__main__":
    main()
