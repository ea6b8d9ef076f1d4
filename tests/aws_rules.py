"""AWS's documented parameter rules, checked on every call a test makes through boto3.

moto and dynalite accept values that AWS refuses (a MessageGroupId with a space, a
key over DynamoDB's size limit), so a test passing there says nothing about AWS.
``AwsRules`` is a botocore ``before-call`` hook: it reads the request as it goes on
the wire (JSON protocol for both SQS and DynamoDB), records every rule it breaks,
and refuses the call as AWS would (a 400 ``InvalidParameterValue`` /
``ValidationException``), so the code under test meets the same error it would
meet on AWS. A test asserts ``rules.violations == []``.

The limits, from the SQS and DynamoDB API references:

* SQS SendMessage(Batch): MessageGroupId and MessageDeduplicationId are 1-128
  characters of a-z, A-Z, 0-9 and punctuation ``!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~``;
  a body is at least one character, at most 256 KiB, of XML's allowed characters;
  a batch holds at most 10 entries (256 KiB in all) with ids of at most 80
  characters of alphanumerics, ``-`` and ``_``, distinct within the batch.
* SQS ReceiveMessage: MaxNumberOfMessages 1-10, WaitTimeSeconds 0-20,
  VisibilityTimeout 0-43,200; the batch calls take 1-10 entries.
* DynamoDB: a partition key value is 1-2,048 bytes, a sort key value 1-1,024
  bytes (the table's keys and every index's); an item is at most 400 KB; a
  BatchGetItem asks for at most 100 keys, a BatchWriteItem at most 25 writes, a
  transaction at most 100 actions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# MessageGroupId / MessageDeduplicationId: ASCII alphanumerics and punctuation, 1-128.
SQS_TAG_RE = re.compile(r"^[A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}$")
BATCH_ENTRY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
# The characters SQS accepts in a message body (XML 1.0's Char production).
BODY_CHARS_RE = re.compile("^[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]+$")
SQS_MAX_MESSAGE_BYTES = 256 * 1024
SQS_MAX_BATCH = 10
DYNAMO_MAX_PARTITION_KEY_BYTES = 2048
DYNAMO_MAX_SORT_KEY_BYTES = 1024
DYNAMO_MAX_ITEM_BYTES = 400 * 1024


def _table_keys() -> dict[str, list[tuple[str, str]]]:
    """Table suffix -> every (attribute, HASH|RANGE) that is a key of the table or one of its indexes."""
    resources = json.loads((ROOT / "infra" / "resources.json").read_text())["Resources"]
    found: dict[str, list[tuple[str, str]]] = {}
    for resource in resources.values():
        props = resource.get("Properties", {})
        if "KeySchema" not in props:
            continue
        suffix = str(props["TableName"]["Fn::Sub"]).split("}", 1)[1]  # "${AWS::StackName}-tasks" -> "-tasks"
        schemas = [props["KeySchema"], *(index["KeySchema"] for index in props.get("GlobalSecondaryIndexes", []))]
        found[suffix] = [(key["AttributeName"], key["KeyType"]) for schema in schemas for key in schema]
    return found


TABLE_KEYS = _table_keys()


def _value_bytes(value: dict[str, Any]) -> int:
    """An attribute value's size as DynamoDB counts it (a string: its UTF-8 bytes; a number: ~1 byte per 2 digits)."""
    (kind, inner), *_ = value.items()
    if kind == "S":
        return len(str(inner).encode())
    if kind == "N":
        return len(str(inner).lstrip("-").replace(".", "")) // 2 + 2
    if kind == "B":
        return len(inner) if isinstance(inner, bytes | bytearray) else len(str(inner)) * 3 // 4
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "NS", "BS"):
        return sum(_value_bytes({kind[0]: v}) for v in inner)
    if kind == "L":
        return 3 + sum(1 + _value_bytes(v) for v in inner)
    if kind == "M":
        return 3 + sum(len(k.encode()) + 1 + _value_bytes(v) for k, v in inner.items())
    return len(json.dumps(inner))


def item_bytes(item: dict[str, Any]) -> int:
    return sum(len(name.encode()) + _value_bytes(value) for name, value in item.items())


@dataclass
class AwsRules:
    """Records every documented limit a request breaks; ``refuse`` makes the call fail as on AWS."""

    refuse: bool = True
    violations: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def register(self, client: Any) -> None:
        client.meta.events.register("before-call.*.*", self.check, unique_id="pqh-aws-rules")

    def check(self, model: Any, params: dict[str, Any], **kwargs: Any) -> Any:
        service = model.service_model.endpoint_prefix
        operation = model.name
        self.calls.append(f"{service}:{operation}")
        body = params.get("body") or b"{}"
        try:
            request = json.loads(body.decode() if isinstance(body, bytes | bytearray) else body)
        except ValueError:  # not a JSON-protocol call (a Lambda payload): no rules here
            request = {}
        if not isinstance(request, dict):
            request = {}
        checker = getattr(self, f"_{service}_{operation}", None)
        broken = checker(request) if checker else []
        if service == "dynamodb":
            broken += self._dynamo_keys_and_items(request)
        if not broken:
            return None
        self.violations += [f"{service}:{operation}: {problem}" for problem in broken]
        if not self.refuse:
            return None
        code = "ValidationException" if service == "dynamodb" else "InvalidParameterValue"
        return _ErrorResponse(400), {
            "Error": {"Code": code, "Message": "; ".join(broken)},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }

    # --- SQS -----------------------------------------------------------------

    @staticmethod
    def _message(entry: dict[str, Any], where: str) -> list[str]:
        broken = []
        for name in ("MessageGroupId", "MessageDeduplicationId"):
            if name in entry and not SQS_TAG_RE.match(str(entry[name])):
                broken.append(f"{where}{name}={entry[name]!r} is not 1-128 ASCII alphanumerics/punctuation")
        text = str(entry.get("MessageBody", ""))
        if not text or not BODY_CHARS_RE.match(text):
            broken.append(f"{where}MessageBody is empty or has characters SQS refuses")
        if len(text.encode()) > SQS_MAX_MESSAGE_BYTES:
            broken.append(f"{where}MessageBody is {len(text.encode())} bytes, over 256 KiB")
        return broken

    @staticmethod
    def _entries(request: dict[str, Any]) -> list[str]:
        entries = request.get("Entries", [])
        broken = []
        if not 1 <= len(entries) <= SQS_MAX_BATCH:
            broken.append(f"{len(entries)} entries; a batch holds 1-10")
        ids = [str(e.get("Id", "")) for e in entries]
        if len(set(ids)) != len(ids) or not all(BATCH_ENTRY_ID_RE.match(i) for i in ids):
            broken.append(f"batch entry ids {ids!r} are not distinct 1-80 character [A-Za-z0-9_-] ids")
        return broken

    def _sqs_SendMessage(self, request: dict[str, Any]) -> list[str]:
        return self._message(request, "")

    def _sqs_SendMessageBatch(self, request: dict[str, Any]) -> list[str]:
        broken = self._entries(request)
        total = 0
        for i, entry in enumerate(request.get("Entries", [])):
            broken += self._message(entry, f"Entries[{i}].")
            total += len(str(entry.get("MessageBody", "")).encode())
        if total > SQS_MAX_MESSAGE_BYTES:
            broken.append(f"the batch's bodies are {total} bytes, over 256 KiB")
        return broken

    def _sqs_ReceiveMessage(self, request: dict[str, Any]) -> list[str]:
        broken = []
        if not 1 <= int(request.get("MaxNumberOfMessages", 1)) <= SQS_MAX_BATCH:
            broken.append(f"MaxNumberOfMessages={request['MaxNumberOfMessages']} is not 1-10")
        if not 0 <= int(request.get("WaitTimeSeconds", 0)) <= 20:
            broken.append(f"WaitTimeSeconds={request['WaitTimeSeconds']} is not 0-20")
        if not 0 <= int(request.get("VisibilityTimeout", 0)) <= 43200:
            broken.append(f"VisibilityTimeout={request['VisibilityTimeout']} is not 0-43200")
        return broken

    def _sqs_DeleteMessageBatch(self, request: dict[str, Any]) -> list[str]:
        return self._entries(request)

    def _sqs_ChangeMessageVisibilityBatch(self, request: dict[str, Any]) -> list[str]:
        broken = self._entries(request)
        for entry in request.get("Entries", []):
            if not 0 <= int(entry.get("VisibilityTimeout", 0)) <= 43200:
                broken.append(f"VisibilityTimeout={entry['VisibilityTimeout']} is not 0-43200")
        return broken

    # --- DynamoDB --------------------------------------------------------------

    def _dynamodb_BatchGetItem(self, request: dict[str, Any]) -> list[str]:
        keys = sum(len(r.get("Keys", [])) for r in request.get("RequestItems", {}).values())
        return [] if keys <= 100 else [f"{keys} keys; a BatchGetItem asks for at most 100"]

    def _dynamodb_BatchWriteItem(self, request: dict[str, Any]) -> list[str]:
        writes = sum(len(r) for r in request.get("RequestItems", {}).values())
        return [] if writes <= 25 else [f"{writes} writes; a BatchWriteItem holds at most 25"]

    def _dynamodb_TransactWriteItems(self, request: dict[str, Any]) -> list[str]:
        actions = len(request.get("TransactItems", []))
        return [] if actions <= 100 else [f"{actions} actions; a transaction holds at most 100"]

    def _dynamo_keys_and_items(self, request: dict[str, Any]) -> list[str]:
        """Every key value and every item the request carries, against the table's key schema."""
        found: list[tuple[str, dict[str, Any], bool]] = []  # (table, attributes, is a whole item)
        table = str(request.get("TableName", ""))
        if "Key" in request:
            found.append((table, request["Key"], False))
        if "Item" in request:
            found.append((table, request["Item"], True))
        for name, wanted in request.get("RequestItems", {}).items():
            for key in wanted.get("Keys", []) if isinstance(wanted, dict) else []:
                found.append((name, key, False))
            for write in wanted if isinstance(wanted, list) else []:
                if "PutRequest" in write:
                    found.append((name, write["PutRequest"]["Item"], True))
                if "DeleteRequest" in write:
                    found.append((name, write["DeleteRequest"]["Key"], False))
        broken = []
        for name, attributes, whole in found:
            keys = next((k for suffix, k in TABLE_KEYS.items() if name.endswith(suffix)), [])
            for attribute, kind in keys:
                if attribute not in attributes:
                    continue
                limit = DYNAMO_MAX_PARTITION_KEY_BYTES if kind == "HASH" else DYNAMO_MAX_SORT_KEY_BYTES
                size = _value_bytes(attributes[attribute])
                if not 1 <= size <= limit:
                    broken.append(f"{name}: key attribute {attribute} is {size} bytes; the limit is 1-{limit}")
            if whole and item_bytes(attributes) > DYNAMO_MAX_ITEM_BYTES:
                broken.append(f"{name}: an item of {item_bytes(attributes)} bytes; the limit is 400 KB")
        # A value an update writes: its key attributes (an index's keys) have the same limits.
        values = request.get("ExpressionAttributeValues", {})
        if values and item_bytes({k: v for k, v in values.items()}) > DYNAMO_MAX_ITEM_BYTES:
            broken.append("the expression's values are over 400 KB")
        return broken


@dataclass
class _ErrorResponse:
    """Enough of an HTTP response for botocore to raise the parsed error as a ClientError."""

    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""
    text: str = ""
