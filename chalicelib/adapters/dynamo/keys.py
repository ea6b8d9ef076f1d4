"""DynamoKeyStore: API keys as items of the control table."""

from __future__ import annotations

from typing import Any

from chalicelib.adapters.dynamo.common import number


def _key_pk(key_hash: str) -> str:
    return f"apikey#{key_hash}"


class DynamoKeyStore:
    """API keys as items ``apikey#<sha256>`` of the control table."""

    def __init__(self, client: Any, table: str) -> None:
        self._db = client
        self._table = table

    def put_key(self, key_hash: str, user_id: str, admin: bool, now: float) -> None:
        self._db.put_item(
            TableName=self._table,
            Item={
                "pk": {"S": _key_pk(key_hash)},
                "user_id": {"S": user_id},
                "admin": {"BOOL": admin},
                "created_at": number(now),
            },
            ConditionExpression="attribute_not_exists(pk)",
        )

    def get_key(self, key_hash: str) -> tuple[str, bool] | None:
        # Consistent: a key revoked a moment ago must not be accepted again.
        response = self._db.get_item(TableName=self._table, Key={"pk": {"S": _key_pk(key_hash)}}, ConsistentRead=True)
        item = response.get("Item")
        if not item:
            return None
        return item["user_id"]["S"], bool(item.get("admin", {}).get("BOOL", False))

    def delete_key(self, key_hash: str) -> bool:
        response = self._db.delete_item(
            TableName=self._table, Key={"pk": {"S": _key_pk(key_hash)}}, ReturnValues="ALL_OLD"
        )
        return bool(response.get("Attributes"))
