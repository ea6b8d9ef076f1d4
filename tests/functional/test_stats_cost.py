"""What one /stats costs in AWS requests, counted by a botocore hook: fixed, whatever the number of users."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from chalicelib import aws, top_users
from chalicelib.adapters.dynamo import DynamoUsageStore
from tests.functional.conftest import Harness

# After warm-up, with tasks queued at two levels and ten users listed: the control table's
# slots and backlog record (1 BatchGetItem), every queue's and dead-letter queue's depth
# (12 GetQueueAttributes), the top-users item and its candidates' counters (1 GetItem,
# 1 BatchGetItem), the running tasks (1 Scan of a sparse index), the recent tasks (2
# Queries: this hour's and the last), the oldest queued task of the two non-empty levels
# (2 Queries) and each listed user's queued tasks (10 COUNT Queries).
EXPECTED = 1 + 12 + 1 + 1 + 1 + 2 + 2 + 10
NOW_BUCKET = 1_800_000_000 // 600 * 600  # the harness clock's bucket (600-s buckets in the dev stage)


def seed_users(count: int) -> None:
    """``count`` users with one submission each in the current bucket, written straight to the usage table.

    Their submissions would have noted the first of them on the top-users list, until it
    was full (a count of one is not above a full list's floor): so are they here.
    """
    db = aws.client("dynamodb")
    usage = DynamoUsageStore(db, "pqh-dev-usage")
    for n in range(min(count, 2 * top_users.KEPT)):
        usage.note_top_user(f"seeded-{n:05d}", 1, NOW_BUCKET, 6000)
    items = [
        {
            "PutRequest": {
                "Item": {
                    "user_id": {"S": f"seeded-{n:05d}"},
                    "sk": {"S": "u"},
                    f"b{NOW_BUCKET}": {"N": "1"},
                    "queued": {"N": "1"},
                    "expires_at": {"N": str(NOW_BUCKET + 6600)},
                }
            }
        }
        for n in range(count)
    ]
    for start in range(0, len(items), 25):
        db.batch_write_item(RequestItems={"pqh-dev-usage": items[start : start + 25]})


def requests_of_one_stats(harness: Harness) -> Counter[str]:
    calls: Counter[str] = Counter()
    unique = f"count-{uuid.uuid4().hex}"
    clients = [aws.client(service) for service in ("dynamodb", "sqs", "ssm", "lambda")]
    for client in clients:
        client.meta.events.register(
            "before-call.*.*",
            lambda model, **kw: calls.update([f"{model.service_model.service_name}:{model.name}"]),
            unique_id=unique,
        )
    try:
        assert harness.client.http.get("/stats").status_code == 200
    finally:
        for client in clients:
            client.meta.events.unregister("before-call.*.*", unique_id=unique)
    return calls


@pytest.mark.parametrize("users", [10, 10_000])
def test_one_stats_costs_the_same_few_requests_at_10_and_10000_users(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, users: int
) -> None:
    monkeypatch.setenv("PQH_STATS_CACHE_SECONDS", "0")
    seed_users(users)
    for n in range(3):  # a few real submissions: queued tasks at two levels, three listed users
        harness.submit(f"real-{n % 2}")
    assert harness.client.http.get("/stats").status_code == 200  # warm: queue URLs are looked up once per process
    calls = requests_of_one_stats(harness)
    print(f"{users} users: {sum(calls.values())} requests: {dict(sorted(calls.items()))}")
    assert sum(calls.values()) == EXPECTED, dict(calls)
    assert len(harness.client.http.get("/stats").json_body["users"]) == top_users.LISTED


def test_stats_are_cached_for_a_few_seconds_per_process(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQH_STATS_CACHE_SECONDS", "5")
    harness.submit("u")
    first = harness.client.http.get("/stats").json_body
    harness.submit("u")
    harness.clock.now += 4.9
    assert sum(requests_of_one_stats(harness).values()) == 0  # the dashboard's next polls cost nothing
    assert harness.client.http.get("/stats").json_body == first
    harness.clock.now += 0.1
    fresh = harness.client.http.get("/stats").json_body
    assert fresh["tasks"]["submitted"] == 2 and fresh["generated_at"] == first["generated_at"] + 5.0


def test_an_idle_system_s_stats_skip_the_per_level_and_per_user_queries(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PQH_STATS_CACHE_SECONDS", "0")
    harness.submit("u")
    harness.dispatch()
    assert harness.outcomes() == ["SUCCESS"]
    assert harness.client.http.get("/stats").status_code == 200
    calls = requests_of_one_stats(harness)
    # Slots and backlog, 12 depths, the top-users item and its one candidate's counters, the
    # running index, and the recent tasks (this hour's holds fewer than 20: the last hour's too).
    # Nothing is queued: no oldest-queued and no per-user queued Query.
    assert dict(calls) == {
        "dynamodb:BatchGetItem": 2,
        "sqs:GetQueueAttributes": 12,
        "dynamodb:GetItem": 1,
        "dynamodb:Scan": 1,
        "dynamodb:Query": 2,
    }
