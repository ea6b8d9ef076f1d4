"""DynamoTaskStore: task records, their state transitions and the sparse indexes stats read."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from chalicelib import policy
from chalicelib.adapters.dynamo.common import conditional_update, is_conditional_failure, number, number_of
from chalicelib.domain import CANCELLED, FAILURE, FINISHED, PENDING, STARTED, Task, TaskSummary
from chalicelib.ports import ALREADY_FINISHED, MISSING, RUNNING_ELSEWHERE, STARTED_NOW

QUEUED_INDEX = "queued-by-user"
AGE_INDEX = "queued-by-age"
RUNNING_INDEX = "running-by-level"
RECENT_INDEX = "recent"


def done_hour(finished_at: float) -> str:
    return f"h{int(finished_at // 3600)}"


def _summary_from_item(item: dict[str, Any]) -> TaskSummary:
    return TaskSummary(
        task_id=item["task_id"]["S"],
        user_id=item["user_id"]["S"],
        task_status=item["task_status"]["S"],
        priority_level=int(number_of(item, "priority_level") or 0),
        submitted_at=number_of(item, "submitted_at") or 0.0,
        started_at=number_of(item, "started_at"),
        finished_at=number_of(item, "finished_at") or 0.0,
        error=item["error"]["S"] if "error" in item else None,
    )


def _task_from_item(item: dict[str, Any]) -> Task:
    def s(name: str) -> str | None:
        return item[name]["S"] if name in item else None

    result = s("task_result")
    return Task(
        task_id=item["task_id"]["S"],
        user_id=item["user_id"]["S"],
        x=json.loads(item["x"]["S"]),
        priority_level=int(item["priority_level"]["N"]),
        submitted_at=float(item["submitted_at"]["N"]),
        expires_at=int(item["expires_at"]["N"]),
        task_status=item["task_status"]["S"],
        started_at=number_of(item, "started_at"),
        finished_at=number_of(item, "finished_at"),
        result=json.loads(result) if result is not None else None,
        error=s("error"),
        run_id=s("run_id"),
        run_lease_until=number_of(item, "run_lease_until"),
        run_holder=s("run_holder"),
        attempts=int(number_of(item, "attempts") or 0),
        tag=number_of(item, "tag") or 0.0,
        cancel_requested=bool(item.get("cancel_requested", {}).get("BOOL", False)),
        queue_seq=int(number_of(item, "queue_seq") or 0),
    )


class DynamoTaskStore:
    """Task records keyed by task_id; the payload and result are JSON strings.

    Three indexes are keyed by few values: the level (``queued-by-age``,
    ``running-by-level``) and the hour a task finished (``recent``). An index key
    takes about a thousand writes a second, like an item. With ``index_shards`` = N
    > 1 (PQH_BACKLOG_SHARDS), a task's keys are spread by its backlog shard k: its
    level key is level + 6k, its hour key ``<hour>#k``; the reads ask each of the N
    keys and merge. With N = 1 the keys are the level and the hour, as always.
    """

    def __init__(self, client: Any, table: str, index_shards: int = 1) -> None:
        self._db = client
        self._table = table
        self._shards = max(1, index_shards)

    def _spread(self, task_id: str) -> int:
        return policy.shard_of(task_id, self._shards)

    def _level_keys(self, level: int) -> list[int]:
        return [level + policy.LEVELS * k for k in range(self._shards)]

    def _hour(self, task_id: str, at: float) -> str:
        hour = done_hour(at)
        return hour if self._shards == 1 else f"{hour}#{self._spread(task_id)}"

    def create(self, task: Task) -> None:
        try:
            self._put_new(task)
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise
            # botocore retries a write whose answer was lost (a cut connection, a
            # timeout); the retry then finds the record the first attempt wrote. Ids
            # are random UUIDs: a record with this id, user and submit time is this one.
            existing = self.get(task.task_id)
            if existing is None or (existing.user_id, existing.submitted_at) != (task.user_id, task.submitted_at):
                raise

    def _put_new(self, task: Task) -> None:
        self._db.put_item(
            TableName=self._table,
            Item={
                "task_id": {"S": task.task_id},
                "user_id": {"S": task.user_id},
                "x": {"S": json.dumps(task.x, ensure_ascii=False)},
                "priority_level": number(task.priority_level),
                "submitted_at": number(task.submitted_at),
                "expires_at": number(task.expires_at),
                "task_status": {"S": task.task_status},
                "tag": number(float(task.tag)),
                "queue_seq": {"N": str(task.queue_seq)},
                **(
                    {
                        "queued_user": {"S": task.user_id},
                        "queued_level": {"N": str(task.priority_level + policy.LEVELS * self._spread(task.task_id))},
                        "queued_since": number(task.submitted_at),
                    }
                    if task.task_status == PENDING
                    else {}
                ),
            },
            ConditionExpression="attribute_not_exists(task_id)",
        )

    def get(self, task_id: str) -> Task | None:
        response = self._db.get_item(TableName=self._table, Key={"task_id": {"S": task_id}}, ConsistentRead=True)
        item = response.get("Item")
        return _task_from_item(item) if item else None

    def delete(self, task_id: str) -> None:
        self._db.delete_item(TableName=self._table, Key={"task_id": {"S": task_id}})

    def _conditional(self, **kwargs: Any) -> bool:
        return conditional_update(self._db, self._table, **kwargs)

    def cancel_pending(self, task_id: str, now: float, expires_at: float) -> bool:
        return self._conditional(
            Key={"task_id": {"S": task_id}},
            UpdateExpression=(
                "SET task_status = :cancelled, finished_at = :now, expires_at = :exp, done_hour = :hour "
                "REMOVE queued_user, queued_level, queued_since"
            ),
            ConditionExpression="task_status = :pending",
            ExpressionAttributeValues={
                ":cancelled": {"S": CANCELLED},
                ":pending": {"S": PENDING},
                ":now": number(now),
                ":exp": {"N": str(int(expires_at))},
                ":hour": {"S": self._hour(task_id, now)},
            },
        )

    def request_cancel(self, task_id: str) -> bool:
        return self._conditional(
            Key={"task_id": {"S": task_id}},
            UpdateExpression="SET cancel_requested = :t",
            ConditionExpression="task_status = :started",
            ExpressionAttributeValues={":t": {"BOOL": True}, ":started": {"S": STARTED}},
        )

    def start(
        self, task_id: str, run_id: str, now: float, lease_until: float, slot_holder: str = ""
    ) -> tuple[str, Task | None]:
        holder = ", run_holder = :holder" if slot_holder else ""
        try:
            response = self._db.update_item(
                TableName=self._table,
                Key={"task_id": {"S": task_id}},
                UpdateExpression=(
                    "SET task_status = :started, started_at = :now, run_id = :run, run_lease_until = :lease, "
                    f"running_level = priority_level + :spread{holder} "
                    "ADD attempts :one REMOVE queued_user, queued_level, queued_since"
                ),
                # Runnable when never started, or when the run that started it has
                # lost its lease (it crashed or timed out): at-least-once delivery.
                ConditionExpression=(
                    "attribute_exists(task_id) AND (task_status = :pending OR "
                    "(task_status = :started AND run_lease_until <= :now))"
                ),
                ExpressionAttributeValues={
                    ":started": {"S": STARTED},
                    ":pending": {"S": PENDING},
                    ":now": number(now),
                    ":run": {"S": run_id},
                    ":lease": number(lease_until),
                    ":one": {"N": "1"},
                    ":spread": {"N": str(policy.LEVELS * self._spread(task_id))},
                    **({":holder": {"S": slot_holder}} if slot_holder else {}),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise
            current = self.get(task_id)
            if current is None:
                return MISSING, None
            if current.task_status in FINISHED:
                return ALREADY_FINISHED, current
            return RUNNING_ELSEWHERE, current
        return STARTED_NOW, _task_from_item(response["Attributes"])

    def finish(
        self,
        task_id: str,
        run_id: str,
        status: str,
        now: float,
        expires_at: float,
        result: object = None,
        error: str | None = None,
        unless_cancel_requested: bool = False,
    ) -> bool:
        values: dict[str, Any] = {
            ":status": {"S": status},
            ":now": number(now),
            ":exp": {"N": str(int(expires_at))},
            ":run": {"S": run_id},
            ":started": {"S": STARTED},
            ":hour": {"S": self._hour(task_id, now)},
        }
        sets = ["task_status = :status", "finished_at = :now", "expires_at = :exp", "done_hour = :hour"]
        if error is None:
            values[":result"] = {"S": json.dumps(result, ensure_ascii=False)}
            sets.append("task_result = :result")
        else:
            values[":error"] = {"S": error}
            sets.append("#err = :error")
        kwargs: dict[str, Any] = {}
        if error is not None:
            kwargs["ExpressionAttributeNames"] = {"#err": "error"}
        # Only the run that owns the task may finish it, and only once.
        condition = "task_status = :started AND run_id = :run"
        if unless_cancel_requested:
            condition += " AND (attribute_not_exists(cancel_requested) OR cancel_requested = :false)"
            values[":false"] = {"BOOL": False}
        return self._conditional(
            Key={"task_id": {"S": task_id}},
            UpdateExpression="SET " + ", ".join(sets) + " REMOVE run_lease_until, running_level, run_holder",
            ConditionExpression=condition,
            ExpressionAttributeValues=values,
            **kwargs,
        )

    def requeue(self, task_id: str, queue_seq: int, expires_at: float, now: float) -> Task | None:
        try:
            response = self._db.update_item(
                TableName=self._table,
                Key={"task_id": {"S": task_id}},
                UpdateExpression=(
                    "SET task_status = :pending, queue_seq = :seq, expires_at = :exp, queued_user = user_id, "
                    "queued_level = priority_level + :spread, queued_since = :now, "
                    "attempts = :zero REMOVE started_at, finished_at, run_id, run_lease_until, running_level, "
                    "run_holder, #err, done_hour, task_result, cancel_requested"
                ),
                ConditionExpression="task_status = :failure",
                ExpressionAttributeNames={"#err": "error"},
                ExpressionAttributeValues={
                    ":pending": {"S": PENDING},
                    ":failure": {"S": FAILURE},
                    ":seq": {"N": str(queue_seq)},
                    ":exp": {"N": str(int(expires_at))},
                    ":zero": {"N": "0"},
                    ":now": number(now),
                    ":spread": {"N": str(policy.LEVELS * self._spread(task_id))},
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if is_conditional_failure(exc):
                return None
            raise
        return _task_from_item(response["Attributes"])

    def recent(self, now: float, limit: int) -> list[TaskSummary]:
        found: list[TaskSummary] = []
        for hour in (done_hour(now), done_hour(now - 3600)):
            keys = [hour] if self._shards == 1 else [f"{hour}#{k}" for k in range(self._shards)]
            in_hour: list[TaskSummary] = []
            for key in keys:
                response = self._db.query(
                    TableName=self._table,
                    IndexName=RECENT_INDEX,
                    KeyConditionExpression="done_hour = :h",
                    ExpressionAttributeValues={":h": {"S": key}},
                    ScanIndexForward=False,
                    Limit=limit - len(found),
                )
                in_hour += [_summary_from_item(item) for item in response.get("Items", [])]
            # Newest first across the hour's keys.
            found += sorted(in_hour, key=lambda t: t.finished_at, reverse=True)[: limit - len(found)]
            if len(found) >= limit:
                break
        return found

    def oldest_queued(self, level: int) -> float | None:
        oldest: float | None = None
        for key in self._level_keys(level):
            response = self._db.query(
                TableName=self._table,
                IndexName=AGE_INDEX,
                KeyConditionExpression="queued_level = :l",
                ExpressionAttributeValues={":l": {"N": str(key)}},
                Limit=1,
            )
            items = response.get("Items", [])
            since = number_of(items[0], "queued_since") if items else None
            if since is not None and (oldest is None or since < oldest):
                oldest = since
        return oldest

    def queued_before(self, level: int, before: float, limit: int) -> list[Task]:
        found: list[tuple[float, Task]] = []
        for key in self._level_keys(level):
            response = self._db.query(
                TableName=self._table,
                IndexName=AGE_INDEX,
                KeyConditionExpression="queued_level = :l AND queued_since < :before",
                ExpressionAttributeValues={":l": {"N": str(key)}, ":before": number(before)},
                Limit=limit,
            )
            found += [
                (
                    number_of(item, "queued_since") or 0.0,
                    Task(
                        task_id=item["task_id"]["S"],
                        user_id=item["user_id"]["S"],
                        x=None,
                        priority_level=level,
                        submitted_at=number_of(item, "submitted_at") or 0.0,
                        expires_at=0,
                        tag=number_of(item, "tag") or 0.0,
                    ),
                )
                for item in response.get("Items", [])
            ]
        return [task for _, task in sorted(found, key=lambda pair: pair[0])[:limit]]

    def mark_requeued(self, task_id: str, now: float, expires_at: float) -> bool:
        return self._conditional(
            Key={"task_id": {"S": task_id}},
            UpdateExpression="SET queued_since = :now, expires_at = :exp",
            ConditionExpression="task_status = :pending",
            ExpressionAttributeValues={
                ":now": number(now),
                ":exp": {"N": str(int(expires_at))},
                ":pending": {"S": PENDING},
            },
        )

    def running_holders(self, now: float) -> dict[int, list[str]]:
        # One Scan of the sparse index: it holds only STARTED tasks (about one per slot),
        # so it is one request where a Query per level was six.
        holders: dict[int, list[str]] = {}
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": RUNNING_INDEX,
            "ProjectionExpression": "running_level, run_lease_until, run_holder",
        }
        while True:
            response = self._db.scan(**kwargs)
            for item in response.get("Items", []):
                # A run whose lease has run out has died: its task runs again when SQS shows its message.
                if (number_of(item, "run_lease_until") or 0.0) > now:
                    level = int(number_of(item, "running_level") or 0) % policy.LEVELS  # spread by shard
                    holders.setdefault(level, []).append(item.get("run_holder", {}).get("S", ""))
            if not response.get("LastEvaluatedKey"):
                return holders
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def queued_count(self, user_id: str) -> int:
        total = 0
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": QUEUED_INDEX,
            "KeyConditionExpression": "queued_user = :u",
            "ExpressionAttributeValues": {":u": {"S": user_id}},
            "Select": "COUNT",
        }
        while True:
            response = self._db.query(**kwargs)
            total += int(response.get("Count", 0))
            if not response.get("LastEvaluatedKey"):
                return total
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
