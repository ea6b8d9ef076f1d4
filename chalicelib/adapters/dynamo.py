"""DynamoDB adapters: usage counters, task records, and the control table.

Each adapter is given a low-level DynamoDB client; it never builds one.
TTL attributes only clean up: every read compares the expiry with ``now``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from botocore.exceptions import ClientError

from chalicelib import policy
from chalicelib.domain import CANCELLED, FAILURE, FINISHED, PENDING, STARTED, Task, TaskSummary, UserUsage
from chalicelib.policy import Backlog, Slot
from chalicelib.ports import ALREADY_FINISHED, MISSING, RUNNING_ELSEWHERE, STARTED_NOW, QueuedLimitError

# The expiry of a weighted user's counters (9999-12-31): DynamoDB's TTL never reaches it.
HOLD = "hold"
HELD_UNTIL = 253_402_300_799


def _is_conditional_failure(exc: ClientError) -> bool:
    return bool(exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException")


def _conditional_update(client: Any, table: str, **kwargs: Any) -> bool:
    """One UpdateItem whose condition may fail: True if it was applied, False if not."""
    try:
        client.update_item(TableName=table, **kwargs)
    except ClientError as exc:
        if _is_conditional_failure(exc):
            return False
        raise
    return True


def _n(value: float | int) -> dict[str, str]:
    return {"N": repr(value) if isinstance(value, float) else str(value)}


def _num(item: dict[str, Any], name: str) -> float | None:
    attr = item.get(name)
    return float(attr["N"]) if attr and "N" in attr else None


USAGE_SK = "u"  # the user's counters: one attribute per time bucket
BUCKET_PREFIX = "b"
# Buckets that have left the window stay on the item until this many have piled
# up; then one more write removes them (about once per this many buckets of an
# active user). The item's TTL removes the whole item once the user is idle.
STALE_LIMIT = 8
# The user's queued counter, on the same item: an upper bound of their queued tasks
# (see UsageStore.record_submission), raised by each submission's own write.
QUEUED = "queued"


def _bucket_attr(start: int) -> str:
    return f"{BUCKET_PREFIX}{start}"


def _buckets(item: dict[str, Any]) -> list[tuple[int, int]]:
    """(bucket start, count) of every bucket attribute of a counters item."""
    found = []
    for name, value in item.items():
        if name.startswith(BUCKET_PREFIX) and name[1:].isdigit() and "N" in value:
            found.append((int(name[1:]), int(value["N"])))
    return found


def _live(buckets: list[tuple[int, int]], now: float, bucket_seconds: int, window_seconds: int) -> int:
    current = policy.bucket_start(now, bucket_seconds)
    return policy.live_count(
        # A later bucket (written across a bucket edge, or clock skew) is not "before".
        ((policy.bucket_expiry(start, bucket_seconds, window_seconds), n) for start, n in buckets if start <= current),
        now,
    )


class DynamoUsageStore:
    """Per-user submission counts in time buckets, and the user's weight, on one item.

    (user_id, "u"): one attribute ``b<bucket start>`` per bucket, the user's
    weight ``w`` once set, and a TTL ``expires_at`` (when its newest
    bucket leaves the window). A submission is one UpdateItem that adds to the
    current bucket and returns the whole item, weight included; setting a weight
    is one UpdateItem of the same item, so there is one source of the weight.

    A user with a weight other than 1 has counters that never expire: they carry
    ``hold`` (a far-future expiry) and each submission sets ``expires_at`` to it.
    So counters without ``w`` (or no counters) mean weight 1, and a user's first
    submission of a window reads nothing more. A user id is only ever a key
    value, so no value of it can reach another user's items.
    """

    def __init__(self, client: Any, table: str) -> None:
        self._db = client
        self._table = table

    def _key(self, user_id: str, sk: str = USAGE_SK) -> dict[str, Any]:
        return {"user_id": {"S": user_id}, "sk": {"S": sk}}

    def record_submission(
        self, user_id: str, now: float, bucket_seconds: int, window_seconds: int, max_queued: int | None = None
    ) -> tuple[int, int]:
        start = policy.bucket_start(now, bucket_seconds)
        expires = policy.bucket_expiry(start, bucket_seconds, window_seconds)
        # One atomic ADD (the queued counter's too, under its limit); the whole item
        # comes back, so concurrent submissions each see a distinct total, and their
        # "count before" values are distinct too.
        values = {":one": {"N": "1"}, ":exp": {"N": str(expires)}}
        limit: dict[str, Any] = {}
        if max_queued is not None:
            values[":max"] = {"N": str(max_queued)}
            limit = {
                "ConditionExpression": "attribute_not_exists(#q) OR #q < :max",
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        try:
            response = self._db.update_item(
                TableName=self._table,
                Key=self._key(user_id),
                UpdateExpression="ADD #b :one, #q :one SET expires_at = if_not_exists(#hold, :exp)",
                ExpressionAttributeNames={"#b": _bucket_attr(start), "#hold": HOLD, "#q": QUEUED},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                **limit,
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            old = exc.response.get("Item") or self._counters(user_id)
            raise QueuedLimitError(int(_num(old, QUEUED) or 0)) from exc
        item = response["Attributes"]
        buckets = _buckets(item)
        self._sweep(user_id, buckets, now, bucket_seconds, window_seconds)
        return _live(buckets, now, bucket_seconds, window_seconds) - 1, _weight(item)

    def _sweep(
        self, user_id: str, buckets: list[tuple[int, int]], now: float, bucket_seconds: int, window_seconds: int
    ) -> None:
        dead = [start for start, _ in buckets if policy.bucket_expiry(start, bucket_seconds, window_seconds) <= now]
        if len(dead) >= STALE_LIMIT:
            self._db.update_item(
                TableName=self._table,
                Key=self._key(user_id),
                UpdateExpression="REMOVE " + ", ".join(f"#x{i}" for i in range(len(dead))),
                ExpressionAttributeNames={f"#x{i}": _bucket_attr(start) for i, start in enumerate(dead)},
            )

    def _counters(self, user_id: str) -> dict[str, Any]:
        response = self._db.get_item(TableName=self._table, Key=self._key(user_id), ConsistentRead=True)
        return response.get("Item") or {}

    def set_queued(self, user_id: str, seen: int, value: int) -> bool:
        return _conditional_update(
            self._db,
            self._table,
            Key=self._key(user_id),
            UpdateExpression="SET #q = :value",
            ConditionExpression="#q = :seen",
            ExpressionAttributeNames={"#q": QUEUED},
            ExpressionAttributeValues={":value": {"N": str(value)}, ":seen": {"N": str(seen)}},
        )

    def usage(self, user_id: str, now: float, bucket_seconds: int, window_seconds: int) -> tuple[int, int]:
        """Live count and weight, from the counters item (consistent read)."""
        response = self._db.query(
            TableName=self._table,
            KeyConditionExpression="user_id = :u AND sk = :sk",
            ExpressionAttributeValues={":u": {"S": user_id}, ":sk": {"S": USAGE_SK}},
            ConsistentRead=True,
        )
        for item in response.get("Items", []):
            return _live(_buckets(item), now, bucket_seconds, window_seconds), _weight(item)
        return 0, 1

    def refund(self, user_id: str, submitted_at: float, now: float, bucket_seconds: int, window_seconds: int) -> bool:
        start = policy.bucket_start(submitted_at, bucket_seconds)
        if not policy.is_live(policy.bucket_expiry(start, bucket_seconds, window_seconds), now):
            return False  # the bucket has left the window: nothing to take back
        return _conditional_update(
            self._db,
            self._table,
            Key=self._key(user_id),
            UpdateExpression="ADD #b :minus",
            ConditionExpression="#b > :zero",  # never below zero
            ExpressionAttributeNames={"#b": _bucket_attr(start)},
            ExpressionAttributeValues={":minus": {"N": "-1"}, ":zero": {"N": "0"}},
        )

    def top_users(
        self, now: float, bucket_seconds: int, window_seconds: int, limit: int, max_items: int
    ) -> tuple[list[UserUsage], bool]:
        # A Scan reads every user's counters: the dashboard's cost, paid per refresh,
        # bounded by ``max_items`` (the answer says when it stopped early).
        counts: dict[str, int] = {}
        weights: dict[str, int] = {}
        kwargs: dict[str, Any] = {"TableName": self._table}
        read = 0
        while True:
            response = self._db.scan(**kwargs)
            for item in response.get("Items", []):
                if item["sk"]["S"] == USAGE_SK:
                    user = item["user_id"]["S"]
                    counts[user] = _live(_buckets(item), now, bucket_seconds, window_seconds)
                    weights[user] = _weight(item)
            read += len(response.get("Items", []))
            last = response.get("LastEvaluatedKey")
            if not last:
                break
            if read >= max_items:
                return _top(counts, weights, limit), True
            kwargs["ExclusiveStartKey"] = last
        return _top(counts, weights, limit), False

    def set_weight(self, user_id: str, weight: int, now: float, bucket_seconds: int, window_seconds: int) -> None:
        if weight != 1:
            self._hold_weight(user_id, weight)
            return
        # Back to 1, the default: the counters may expire again (when the newest
        # possible bucket leaves the window; the next submission sets it anyway),
        # and counters made after that have no w, which also means 1.
        expires = policy.bucket_expiry(policy.bucket_start(now, bucket_seconds), bucket_seconds, window_seconds)
        self._db.update_item(
            TableName=self._table,
            Key=self._key(user_id),
            UpdateExpression="SET w = :one, expires_at = :exp REMOVE #hold",
            ExpressionAttributeNames={"#hold": HOLD},
            ExpressionAttributeValues={":one": {"N": "1"}, ":exp": {"N": str(expires)}},
        )

    def _hold_weight(self, user_id: str, weight: int) -> None:
        """A weight other than 1 onto the counters, which then never expire (else they would forget it).

        Creates the counters if the user has none yet.
        """
        self._db.update_item(
            TableName=self._table,
            Key=self._key(user_id),
            UpdateExpression="SET w = :w, #hold = :never, expires_at = :never",
            ExpressionAttributeNames={"#hold": HOLD},
            ExpressionAttributeValues={":w": {"N": str(weight)}, ":never": {"N": str(HELD_UNTIL)}},
        )


def _weight(counters: dict[str, Any]) -> int:
    return int(counters["w"]["N"]) if "w" in counters else 1


def _top(counts: dict[str, int], weights: dict[str, int], limit: int) -> list[UserUsage]:
    users = sorted((-n, user) for user, n in counts.items() if n > 0)[:limit]
    return [UserUsage(user, -n, weights.get(user, 1)) for n, user in users]


# Sparse indexes of the tasks table (infra/resources.json): a task is in
# QUEUED_INDEX (key queued_user) and AGE_INDEX (key queued_level, sorted by
# queued_since) while PENDING, in RUNNING_INDEX (key running_level, sorted by
# run_lease_until) while STARTED, and in RECENT_INDEX (key done_hour, sorted by
# finished_at) once finished.
QUEUED_INDEX = "queued-by-user"
AGE_INDEX = "queued-by-age"
RUNNING_INDEX = "running-by-level"
RECENT_INDEX = "recent"


def done_hour(finished_at: float) -> str:
    return f"h{int(finished_at // 3600)}"


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
        started_at=_num(item, "started_at"),
        finished_at=_num(item, "finished_at"),
        result=json.loads(result) if result is not None else None,
        error=s("error"),
        run_id=s("run_id"),
        run_lease_until=_num(item, "run_lease_until"),
        run_holder=s("run_holder"),
        attempts=int(_num(item, "attempts") or 0),
        tag=_num(item, "tag") or 0.0,
        cancel_requested=bool(item.get("cancel_requested", {}).get("BOOL", False)),
        queue_seq=int(_num(item, "queue_seq") or 0),
    )


class DynamoTaskStore:
    """Task records keyed by task_id; the payload and result are JSON strings."""

    def __init__(self, client: Any, table: str) -> None:
        self._db = client
        self._table = table

    def create(self, task: Task) -> None:
        self._db.put_item(
            TableName=self._table,
            Item={
                "task_id": {"S": task.task_id},
                "user_id": {"S": task.user_id},
                "x": {"S": json.dumps(task.x, ensure_ascii=False)},
                "priority_level": _n(task.priority_level),
                "submitted_at": _n(task.submitted_at),
                "expires_at": _n(task.expires_at),
                "task_status": {"S": task.task_status},
                "tag": _n(float(task.tag)),
                "queue_seq": {"N": str(task.queue_seq)},
                **(
                    {
                        "queued_user": {"S": task.user_id},
                        "queued_level": {"N": str(task.priority_level)},
                        "queued_since": _n(task.submitted_at),
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
        return _conditional_update(self._db, self._table, **kwargs)

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
                ":now": _n(now),
                ":exp": {"N": str(int(expires_at))},
                ":hour": {"S": done_hour(now)},
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
                    f"running_level = priority_level{holder} "
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
                    ":now": _n(now),
                    ":run": {"S": run_id},
                    ":lease": _n(lease_until),
                    ":one": {"N": "1"},
                    **({":holder": {"S": slot_holder}} if slot_holder else {}),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
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
            ":now": _n(now),
            ":exp": {"N": str(int(expires_at))},
            ":run": {"S": run_id},
            ":started": {"S": STARTED},
            ":hour": {"S": done_hour(now)},
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
                    "queued_level = priority_level, queued_since = :now, "
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
                    ":now": _n(now),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _is_conditional_failure(exc):
                return None
            raise
        return _task_from_item(response["Attributes"])

    def recent(self, now: float, limit: int) -> list[TaskSummary]:
        found: list[TaskSummary] = []
        for hour in (done_hour(now), done_hour(now - 3600)):
            response = self._db.query(
                TableName=self._table,
                IndexName=RECENT_INDEX,
                KeyConditionExpression="done_hour = :h",
                ExpressionAttributeValues={":h": {"S": hour}},
                ScanIndexForward=False,
                Limit=limit - len(found),
            )
            for item in response.get("Items", []):
                found.append(
                    TaskSummary(
                        task_id=item["task_id"]["S"],
                        user_id=item["user_id"]["S"],
                        task_status=item["task_status"]["S"],
                        priority_level=int(_num(item, "priority_level") or 0),
                        submitted_at=_num(item, "submitted_at") or 0.0,
                        started_at=_num(item, "started_at"),
                        finished_at=_num(item, "finished_at") or 0.0,
                        error=item["error"]["S"] if "error" in item else None,
                    )
                )
            if len(found) >= limit:
                break
        return found

    def oldest_queued(self, level: int) -> float | None:
        response = self._db.query(
            TableName=self._table,
            IndexName=AGE_INDEX,
            KeyConditionExpression="queued_level = :l",
            ExpressionAttributeValues={":l": {"N": str(level)}},
            Limit=1,
        )
        items = response.get("Items", [])
        return _num(items[0], "queued_since") if items else None

    def queued_before(self, level: int, before: float, limit: int) -> list[Task]:
        response = self._db.query(
            TableName=self._table,
            IndexName=AGE_INDEX,
            KeyConditionExpression="queued_level = :l AND queued_since < :before",
            ExpressionAttributeValues={":l": {"N": str(level)}, ":before": _n(before)},
            Limit=limit,
        )
        return [
            Task(
                task_id=item["task_id"]["S"],
                user_id=item["user_id"]["S"],
                x=None,
                priority_level=level,
                submitted_at=_num(item, "submitted_at") or 0.0,
                expires_at=0,
                tag=_num(item, "tag") or 0.0,
            )
            for item in response.get("Items", [])
        ]

    def mark_requeued(self, task_id: str, now: float, expires_at: float) -> bool:
        return self._conditional(
            Key={"task_id": {"S": task_id}},
            UpdateExpression="SET queued_since = :now, expires_at = :exp",
            ConditionExpression="task_status = :pending",
            ExpressionAttributeValues={
                ":now": _n(now),
                ":exp": {"N": str(int(expires_at))},
                ":pending": {"S": PENDING},
            },
        )

    def running_holders(self, level: int, now: float) -> list[str]:
        holders: list[str] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": RUNNING_INDEX,
            # A run whose lease has run out has died: its task runs again when SQS shows its message.
            "KeyConditionExpression": "running_level = :l AND run_lease_until > :now",
            "ExpressionAttributeValues": {":l": {"N": str(level)}, ":now": _n(now)},
            "ProjectionExpression": "run_holder",
        }
        while True:
            response = self._db.query(**kwargs)
            holders += [item.get("run_holder", {}).get("S", "") for item in response.get("Items", [])]
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


BACKLOG_KEY = "backlog"
TALLY_ATTRS = ("ts", "tf", "tc")  # policy.TALLIES: succeeded, failed, cancelled


def _slot_key(slot_id: int) -> str:
    return f"slot#{slot_id}"


def _backlog_from(item: dict[str, Any]) -> Backlog:
    return Backlog(
        counts=tuple(max(0, int(_num(item, f"l{level}") or 0)) for level in range(policy.LEVELS)),
        passes=tuple(_num(item, f"p{level}") or 0.0 for level in range(policy.LEVELS)),
        vtime=_num(item, "vt") or 0.0,
        version=int(_num(item, "v") or 0),
        enqueued=tuple(int(_num(item, f"e{level}") or 0) for level in range(policy.LEVELS)),
        dequeued=tuple(int(_num(item, f"d{level}") or 0) for level in range(policy.LEVELS)),
        run_seconds=_num(item, "rt") or 0.0,
        tallies=tuple(int(_num(item, name) or 0) for name in TALLY_ATTRS),
        withdrawn=tuple(int(_num(item, f"w{level}") or 0) for level in range(policy.LEVELS)),
        stamps=tuple(int(_num(item, f"s{level}") or 0) for level in range(policy.LEVELS)),
        arrival_rates=tuple(_num(item, f"a{level}") or 0.0 for level in range(policy.LEVELS)),
        rated_enqueued=tuple(int(_num(item, f"r{level}") or 0) for level in range(policy.LEVELS)),
        rated_at=_num(item, "ra") or 0.0,
    )


def _tally_adds(tallies: Sequence[int], values: dict[str, Any]) -> list[str]:
    """ADD clauses for the non-zero tallies (their values go into ``values``)."""
    adds = []
    for name, count in zip(TALLY_ATTRS, tallies or (0,) * len(TALLY_ATTRS), strict=True):
        if count:
            values[f":{name}"] = {"N": str(count)}
            adds.append(f"{name} :{name}")
    return adds


class DynamoControlStore:
    """Capacity slots and the per-level backlog counts.

    A slot is held only while its lease is live; every claim compares the lease
    with ``now``, so a worker that dies frees its slot when the lease runs out.
    The backlog item counts queued tasks per level (l0..l5): +1 after a send,
    -1 by the worker that takes one to run. It also holds the fair policy's
    virtual times (p0..p5, vt), the priority policy's stamps (s0..s5), the
    levels' arrival rates (a0..a5, counted up to r0..r5, as of ra) and a version
    (v) that every pick moves on.
    """

    def __init__(self, client: Any, table: str) -> None:
        self._db = client
        self._table = table

    def _update(self, key: str, **kwargs: Any) -> bool:
        return _conditional_update(self._db, self._table, Key={"pk": {"S": key}}, **kwargs)

    def slots(self, capacity: int) -> list[Slot]:
        return self._read_slots(capacity, with_backlog=False)[0]

    def slots_and_backlog(self, capacity: int) -> tuple[list[Slot], Backlog]:
        slots, backlog = self._read_slots(capacity, with_backlog=True)
        return slots, backlog or Backlog()

    def _read_slots(self, capacity: int, with_backlog: bool) -> tuple[list[Slot], Backlog | None]:
        """The slots' items (and the backlog item), a hundred keys per BatchGetItem."""
        found: list[Slot] = []
        backlog: Backlog | None = None
        keys = [{"pk": {"S": _slot_key(i)}} for i in range(capacity)]
        if with_backlog:
            keys.append({"pk": {"S": BACKLOG_KEY}})
        for start in range(0, len(keys), 100):
            request: dict[str, Any] = {self._table: {"Keys": keys[start : start + 100], "ConsistentRead": True}}
            while request:
                response = self._db.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self._table, []):
                    if item["pk"]["S"] == BACKLOG_KEY:
                        backlog = _backlog_from(item)
                        continue
                    found.append(
                        Slot(
                            slot_id=int(item["pk"]["S"].split("#", 1)[1]),
                            holder=item.get("holder", {}).get("S"),
                            lease_until=_num(item, "lease_until") or 0.0,
                            tallies=tuple(int(_num(item, name) or 0) for name in TALLY_ATTRS),
                        )
                    )
                request = response.get("UnprocessedKeys") or {}
        return sorted(found, key=lambda s: s.slot_id), backlog

    def claim_slot(self, slot_id: int, holder: str, now: float, lease_until: float) -> bool:
        return self._update(
            _slot_key(slot_id),
            UpdateExpression="SET holder = :h, lease_until = :l",
            ConditionExpression="attribute_not_exists(holder) OR lease_until <= :now",
            ExpressionAttributeValues={":h": {"S": holder}, ":l": _n(lease_until), ":now": _n(now)},
        )

    def take_over_slot(self, slot_id: int, holder: str, new_holder: str, now: float, lease_until: float) -> bool:
        return self._update(
            _slot_key(slot_id),
            UpdateExpression="SET holder = :new, lease_until = :l",
            ConditionExpression="holder = :h AND lease_until > :now",
            ExpressionAttributeValues={
                ":h": {"S": holder},
                ":new": {"S": new_holder},
                ":l": _n(lease_until),
                ":now": _n(now),
            },
        )

    def renew_slot(self, slot_id: int, holder: str, lease_until: float) -> bool:
        return self._update(
            _slot_key(slot_id),
            UpdateExpression="SET lease_until = :l",
            ConditionExpression="holder = :h",
            ExpressionAttributeValues={":h": {"S": holder}, ":l": _n(lease_until)},
        )

    def release_slot(self, slot_id: int, holder: str, tallies: Sequence[int] = ()) -> bool:
        values: dict[str, Any] = {":h": {"S": holder}}
        adds = _tally_adds(tallies, values)
        return self._update(
            _slot_key(slot_id),
            UpdateExpression="REMOVE holder, lease_until" + (" ADD " + ", ".join(adds) if adds else ""),
            ConditionExpression="holder = :h",
            ExpressionAttributeValues=values,
        )

    def backlog(self) -> Backlog:
        response = self._db.get_item(TableName=self._table, Key={"pk": {"S": BACKLOG_KEY}}, ConsistentRead=True)
        return _backlog_from(response.get("Item", {}))

    def add_backlog(self, level: int, delta: int, tallies: Sequence[int] = ()) -> int:
        values: dict[str, Any] = {":d": {"N": str(delta)}}
        adds = ["#l :d", *_tally_adds(tallies, values)]
        response = self._db.update_item(
            TableName=self._table,
            Key={"pk": {"S": BACKLOG_KEY}},
            UpdateExpression="ADD " + ", ".join(adds),
            ExpressionAttributeNames={"#l": f"l{level}"},
            ExpressionAttributeValues=values,
            ReturnValues="UPDATED_NEW",
        )
        return int(response.get("Attributes", {}).get(f"l{level}", {}).get("N", "0"))

    def enqueue(self, level: int) -> tuple[int, int]:
        # One atomic ADD of the count and the sequence: concurrent submits get distinct numbers.
        response = self._db.update_item(
            TableName=self._table,
            Key={"pk": {"S": BACKLOG_KEY}},
            UpdateExpression="ADD #l :one, #e :one",
            ExpressionAttributeNames={"#l": f"l{level}", "#e": f"e{level}"},
            ExpressionAttributeValues={":one": {"N": "1"}},
            ReturnValues="UPDATED_NEW",
        )
        attributes = response["Attributes"]
        return int(attributes[f"l{level}"]["N"]), int(attributes[f"e{level}"]["N"])

    def withdraw(self, level: int) -> None:
        self._db.update_item(
            TableName=self._table,
            Key={"pk": {"S": BACKLOG_KEY}},
            UpdateExpression="ADD #l :minus, #w :one",
            ExpressionAttributeNames={"#l": f"l{level}", "#w": f"w{level}"},
            ExpressionAttributeValues={":minus": {"N": "-1"}, ":one": {"N": "1"}},
        )

    def commit_pick(
        self, seen: Backlog, after: Backlog, takes: Mapping[int, int], tallies: Sequence[int] = ()
    ) -> tuple[bool, Backlog]:
        wanted = policy.takes_of(takes)
        # Optimistic concurrency: the pick was chosen from ``seen``; it stands only if
        # what the choice depends on is unchanged: no other pick since (the version,
        # which only picks move on), and the same levels empty and non-empty (a
        # submit to a level that already had tasks does not change the choice).
        version = "v = :v" if seen.version else "attribute_not_exists(v)"
        shape = [
            f"l{lvl} > :zero" if count > 0 else f"(attribute_not_exists(l{lvl}) OR l{lvl} <= :zero)"
            for lvl, count in enumerate(seen.counts)
        ]
        values: dict[str, Any] = {":zero": {"N": "0"}, ":one": {"N": "1"}}
        # Only what the pick changes is written (usually vt and one level's pass):
        # with the version unchanged, the rest is as ``seen`` has it.
        sets = []
        if after.vtime != seen.vtime:
            values[":vt"] = _n(float(after.vtime))
            sets.append("vt = :vt")
        if after.run_seconds > 0 and after.run_seconds != seen.run_seconds:
            values[":rt"] = _n(float(after.run_seconds))
            sets.append("rt = :rt")
        if after.rated_at != seen.rated_at:
            values[":ra"] = _n(float(after.rated_at))
            sets.append("ra = :ra")
        for prefix, new_values, old_values, kind in (
            ("p", after.passes, seen.passes, float),
            ("s", after.stamps, seen.stamps, int),
            ("a", after.arrival_rates, seen.arrival_rates, float),
            ("r", after.rated_enqueued, seen.rated_enqueued, int),
        ):
            for lvl, value in enumerate(new_values):
                if value != old_values[lvl]:
                    values[f":{prefix}{lvl}"] = _n(kind(value))
                    sets.append(f"{prefix}{lvl} = :{prefix}{lvl}")
        if seen.version:
            values[":v"] = {"N": str(seen.version)}
        adds, enough = [], []
        for lvl, n in sorted(wanted.items()):
            values[f":t{lvl}"], values[f":m{lvl}"] = {"N": str(n)}, {"N": str(-n)}
            adds += [f"l{lvl} :m{lvl}", f"d{lvl} :t{lvl}"]
            enough.append(f"l{lvl} >= :t{lvl}")
        adds += ["v :one", *_tally_adds(tallies, values)]
        try:
            response = self._db.update_item(
                TableName=self._table,
                Key={"pk": {"S": BACKLOG_KEY}},
                UpdateExpression=(f"SET {', '.join(sets)} " if sets else "") + f"ADD {', '.join(adds)}",
                ConditionExpression=" AND ".join([version, *enough, *shape]),
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            if "Item" not in exc.response:  # an emulator that does not return it: read it
                return False, self.backlog()
            return False, _backlog_from(exc.response["Item"])
        return True, _backlog_from(response.get("Attributes", {}))


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
                "created_at": _n(now),
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
