"""What the DynamoDB adapters share: conditional updates and number attributes."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError


def is_conditional_failure(exc: ClientError) -> bool:
    return bool(exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException")


def conditional_update(client: Any, table: str, **kwargs: Any) -> bool:
    """One UpdateItem whose condition may fail: True if it was applied, False if not."""
    try:
        client.update_item(TableName=table, **kwargs)
    except ClientError as exc:
        if is_conditional_failure(exc):
            return False
        raise
    return True


def number(value: float | int) -> dict[str, str]:
    return {"N": repr(value) if isinstance(value, float) else str(value)}


def number_of(item: dict[str, Any], name: str) -> float | None:
    attr = item.get(name)
    return float(attr["N"]) if attr and "N" in attr else None
