"""DynamoControlStore: capacity slots and the backlog record (per-level counts and the policy's state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from botocore.exceptions import ClientError

from chalicelib import policy
from chalicelib.adapters.dynamo.common import conditional_update, is_conditional_failure, number, number_of
from chalicelib.policy import Backlog, Slot

BACKLOG_KEY = "backlog"
TALLY_ATTRS = ("ts", "tf", "tc")  # policy.TALLIES: succeeded, failed, cancelled


def _slot_key(slot_id: int) -> str:
    return f"slot#{slot_id}"


def backlog_key(shard: int) -> str:
    """Shard 0's record is ``backlog`` (the only one with one shard); shard k's is ``backlog#k``."""
    return BACKLOG_KEY if shard == 0 else f"{BACKLOG_KEY}#{shard}"


def _backlog_from(item: dict[str, Any]) -> Backlog:
    return Backlog(
        counts=tuple(max(0, int(number_of(item, f"l{level}") or 0)) for level in range(policy.LEVELS)),
        passes=tuple(number_of(item, f"p{level}") or 0.0 for level in range(policy.LEVELS)),
        vtime=number_of(item, "vt") or 0.0,
        version=int(number_of(item, "v") or 0),
        enqueued=tuple(int(number_of(item, f"e{level}") or 0) for level in range(policy.LEVELS)),
        dequeued=tuple(int(number_of(item, f"d{level}") or 0) for level in range(policy.LEVELS)),
        run_seconds=number_of(item, "rt") or 0.0,
        tallies=tuple(int(number_of(item, name) or 0) for name in TALLY_ATTRS),
        withdrawn=tuple(int(number_of(item, f"w{level}") or 0) for level in range(policy.LEVELS)),
        stamps=tuple(int(number_of(item, f"s{level}") or 0) for level in range(policy.LEVELS)),
        arrival_rates=tuple(number_of(item, f"a{level}") or 0.0 for level in range(policy.LEVELS)),
        rated_enqueued=tuple(int(number_of(item, f"r{level}") or 0) for level in range(policy.LEVELS)),
        rated_at=number_of(item, "ra") or 0.0,
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

    def __init__(self, client: Any, table: str, shard: int = 0) -> None:
        self._db = client
        self._table = table
        self._shard = shard
        self._key = backlog_key(shard)

    def shard(self, shard: int) -> DynamoControlStore:
        return self if shard == self._shard else DynamoControlStore(self._db, self._table, shard)

    def _update(self, key: str, **kwargs: Any) -> bool:
        return conditional_update(self._db, self._table, Key={"pk": {"S": key}}, **kwargs)

    def slots(self, capacity: int) -> list[Slot]:
        return self._read(capacity, [])[0]

    def slots_and_backlog(self, capacity: int) -> tuple[list[Slot], Backlog]:
        slots, backlogs = self._read(capacity, [self._shard])
        return slots, backlogs[0]

    def slots_and_backlogs(self, capacity: int, shards: int) -> tuple[list[Slot], list[Backlog]]:
        return self._read(capacity, list(range(max(1, shards))))

    def backlogs(self, shards: int) -> list[Backlog]:
        return self.backlogs_of(range(max(1, shards)))

    def backlogs_of(self, shards: Sequence[int]) -> list[Backlog]:
        return self._read(0, list(shards))[1]

    def _read(self, capacity: int, shards: list[int]) -> tuple[list[Slot], list[Backlog]]:
        """The slots' items and the named shards' backlog items, a hundred keys per BatchGetItem."""
        found: list[Slot] = []
        backlogs = {backlog_key(k): Backlog() for k in shards}
        keys = [{"pk": {"S": _slot_key(i)}} for i in range(capacity)]
        keys += [{"pk": {"S": key}} for key in backlogs]
        for start in range(0, len(keys), 100):
            request: dict[str, Any] = {self._table: {"Keys": keys[start : start + 100], "ConsistentRead": True}}
            while request:
                response = self._db.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self._table, []):
                    if item["pk"]["S"] in backlogs:
                        backlogs[item["pk"]["S"]] = _backlog_from(item)
                        continue
                    found.append(
                        Slot(
                            slot_id=int(item["pk"]["S"].split("#", 1)[1]),
                            holder=item.get("holder", {}).get("S"),
                            lease_until=number_of(item, "lease_until") or 0.0,
                            tallies=tuple(int(number_of(item, name) or 0) for name in TALLY_ATTRS),
                        )
                    )
                request = response.get("UnprocessedKeys") or {}
        return sorted(found, key=lambda s: s.slot_id), [backlogs[backlog_key(k)] for k in shards]

    def claim_slot(self, slot_id: int, holder: str, now: float, lease_until: float) -> bool:
        return self._update(
            _slot_key(slot_id),
            UpdateExpression="SET holder = :h, lease_until = :l",
            ConditionExpression="attribute_not_exists(holder) OR lease_until <= :now",
            ExpressionAttributeValues={":h": {"S": holder}, ":l": number(lease_until), ":now": number(now)},
        )

    def take_over_slot(self, slot_id: int, holder: str, new_holder: str, now: float, lease_until: float) -> bool:
        return self._update(
            _slot_key(slot_id),
            UpdateExpression="SET holder = :new, lease_until = :l",
            ConditionExpression="holder = :h AND lease_until > :now",
            ExpressionAttributeValues={
                ":h": {"S": holder},
                ":new": {"S": new_holder},
                ":l": number(lease_until),
                ":now": number(now),
            },
        )

    def renew_slot(self, slot_id: int, holder: str, lease_until: float) -> bool:
        return self._update(
            _slot_key(slot_id),
            UpdateExpression="SET lease_until = :l",
            ConditionExpression="holder = :h",
            ExpressionAttributeValues={":h": {"S": holder}, ":l": number(lease_until)},
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
        response = self._db.get_item(TableName=self._table, Key={"pk": {"S": self._key}}, ConsistentRead=True)
        return _backlog_from(response.get("Item", {}))

    def add_backlog(self, level: int, delta: int, tallies: Sequence[int] = ()) -> int:
        values: dict[str, Any] = {":d": {"N": str(delta)}}
        adds = ["#l :d", *_tally_adds(tallies, values)]
        response = self._db.update_item(
            TableName=self._table,
            Key={"pk": {"S": self._key}},
            UpdateExpression="ADD " + ", ".join(adds),
            ExpressionAttributeNames={"#l": f"l{level}"},
            ExpressionAttributeValues=values,
            ReturnValues="UPDATED_NEW",
        )
        return int(response.get("Attributes", {}).get(f"l{level}", {}).get("N", "0"))

    def enqueue(self, level: int, again: bool = False) -> tuple[int, int]:
        # One atomic ADD of the count and the sequence: concurrent submits get distinct numbers.
        names = {"#l": f"l{level}", "#e": f"e{level}", **({"#w": f"w{level}"} if again else {})}
        response = self._db.update_item(
            TableName=self._table,
            Key={"pk": {"S": self._key}},
            UpdateExpression="ADD #l :one, #e :one" + (", #w :one" if again else ""),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={":one": {"N": "1"}},
            ReturnValues="UPDATED_NEW",
        )
        attributes = response["Attributes"]
        return int(attributes[f"l{level}"]["N"]), int(attributes[f"e{level}"]["N"])

    def withdraw(self, level: int) -> None:
        self._db.update_item(
            TableName=self._table,
            Key={"pk": {"S": self._key}},
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
            values[":vt"] = number(float(after.vtime))
            sets.append("vt = :vt")
        if after.run_seconds > 0 and after.run_seconds != seen.run_seconds:
            values[":rt"] = number(float(after.run_seconds))
            sets.append("rt = :rt")
        if after.rated_at != seen.rated_at:
            values[":ra"] = number(float(after.rated_at))
            sets.append("ra = :ra")
        for prefix, new_values, old_values, kind in (
            ("p", after.passes, seen.passes, float),
            ("s", after.stamps, seen.stamps, int),
            ("a", after.arrival_rates, seen.arrival_rates, float),
            ("r", after.rated_enqueued, seen.rated_enqueued, int),
        ):
            for lvl, value in enumerate(new_values):
                if value != old_values[lvl]:
                    values[f":{prefix}{lvl}"] = number(kind(value))
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
                Key={"pk": {"S": self._key}},
                UpdateExpression=(f"SET {', '.join(sets)} " if sets else "") + f"ADD {', '.join(adds)}",
                ConditionExpression=" AND ".join([version, *enough, *shape]),
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise
            if "Item" not in exc.response:  # an emulator that does not return it: read it
                return False, self.backlog()
            return False, _backlog_from(exc.response["Item"])
        return True, _backlog_from(response.get("Attributes", {}))
