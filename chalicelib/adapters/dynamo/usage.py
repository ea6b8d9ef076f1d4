"""DynamoUsageStore: each user's submission counters (time buckets with a TTL) and weight."""

from __future__ import annotations

import hashlib
from typing import Any

from botocore.exceptions import ClientError

from chalicelib import policy, top_users
from chalicelib.adapters.dynamo.common import conditional_update, is_conditional_failure, number, number_of
from chalicelib.domain import UserUsage
from chalicelib.ports import QueuedLimitError

# The expiry of a weighted user's counters (9999-12-31): DynamoDB's TTL never reaches it.
HOLD = "hold"
HELD_UNTIL = 253_402_300_799


USAGE_SK = "u"  # the user's counters: one attribute per time bucket
BUCKET_PREFIX = "b"
# Buckets that have left the window stay on the item until this many have piled
# up; then one more write removes them (about once per this many buckets of an
# active user). The item's TTL removes the whole item once the user is idle.
STALE_LIMIT = 8
# The user's queued counter, on the same item: an upper bound of their queued tasks
# (see UsageStore.record_submission), raised by each submission's own write.
QUEUED = "queued"
# The top-users candidates (chalicelib/top_users.py): one item beside the users' counters.
# Its sort key is not USAGE_SK, so no user id reaches it.
TOP_USERS_KEY = "~top-users"
TOP_USERS_SK = "top"


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
            if not is_conditional_failure(exc):
                raise
            old = exc.response.get("Item") or self._counters(user_id)
            raise QueuedLimitError(int(number_of(old, QUEUED) or 0)) from exc
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
        return conditional_update(
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
        return conditional_update(
            self._db,
            self._table,
            Key=self._key(user_id),
            UpdateExpression="ADD #b :minus",
            ConditionExpression="#b > :zero",  # never below zero
            ExpressionAttributeNames={"#b": _bucket_attr(start)},
            ExpressionAttributeValues={":minus": {"N": "-1"}, ":zero": {"N": "0"}},
        )

    def note_top_user(self, user_id: str, count: int, now: float, window_seconds: int) -> int:
        # One attribute per candidate on one item; the write returns the item, so the
        # floor comes back at no extra cost. Past KEPT, a second write drops the lowest.
        response = self._db.update_item(
            TableName=self._table,
            Key=self._key(TOP_USERS_KEY, TOP_USERS_SK),
            UpdateExpression="SET #c = :c",
            ExpressionAttributeNames={"#c": _candidate_attr(user_id)},
            ExpressionAttributeValues={
                ":c": {"M": {"u": {"S": user_id}, "n": {"N": str(count)}, "t": number(now)}},
            },
            ReturnValues="ALL_NEW",
        )
        candidates = _candidates(response.get("Attributes", {}))
        dropped = top_users.overflow(candidates, now, window_seconds)
        if dropped:
            # Unconditional: a dropped user noted again meanwhile is noted again at its next milestone.
            self._db.update_item(
                TableName=self._table,
                Key=self._key(TOP_USERS_KEY, TOP_USERS_SK),
                UpdateExpression="REMOVE " + ", ".join(f"#x{i}" for i in range(len(dropped))),
                ExpressionAttributeNames={f"#x{i}": _candidate_attr(c.user_id) for i, c in enumerate(dropped)},
            )
            candidates = [c for c in candidates if c not in dropped]
        return top_users.floor_of(candidates, now, window_seconds)

    def top_users(self, now: float, bucket_seconds: int, window_seconds: int, limit: int) -> list[UserUsage]:
        # Two requests whatever the number of users: the candidates item, then their counters.
        response = self._db.get_item(TableName=self._table, Key=self._key(TOP_USERS_KEY, TOP_USERS_SK))
        users = sorted({c.user_id for c in _candidates(response.get("Item", {}))})
        counts: dict[str, int] = {}
        weights: dict[str, int] = {}
        for start in range(0, len(users), 100):
            request: dict[str, Any] = {self._table: {"Keys": [self._key(user) for user in users[start : start + 100]]}}
            while request:
                got = self._db.batch_get_item(RequestItems=request)
                for item in got.get("Responses", {}).get(self._table, []):
                    user = item["user_id"]["S"]
                    counts[user] = _live(_buckets(item), now, bucket_seconds, window_seconds)
                    weights[user] = _weight(item)
                request = got.get("UnprocessedKeys") or {}
        return _top(counts, weights, limit)

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


def _candidate_attr(user_id: str) -> str:
    """A candidate's attribute: named by a digest, as a user id may be any text up to 2 KB."""
    return "c" + hashlib.sha256(user_id.encode()).hexdigest()[:32]


def _candidates(item: dict[str, Any]) -> list[top_users.Candidate]:
    found = []
    for name, value in item.items():
        entry = value.get("M") if name.startswith("c") else None
        if entry and "u" in entry:
            found.append(top_users.Candidate(entry["u"]["S"], int(entry["n"]["N"]), float(entry["t"]["N"])))
    return found


def _weight(counters: dict[str, Any]) -> int:
    return int(counters["w"]["N"]) if "w" in counters else 1


def _top(counts: dict[str, int], weights: dict[str, int], limit: int) -> list[UserUsage]:
    users = sorted((-n, user) for user, n in counts.items() if n > 0)[:limit]
    return [UserUsage(user, -n, weights.get(user, 1)) for n, user in users]


# Sparse indexes of the tasks table (infra/resources.json): a task is in
# QUEUED_INDEX (key queued_user) and AGE_INDEX (key queued_level, sorted by
# queued_since) while PENDING, in RUNNING_INDEX (key running_level, sorted by
# run_lease_until) while STARTED, and in RECENT_INDEX (key done_hour, sorted by
