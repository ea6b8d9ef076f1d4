"""local/moto_patches: the speed patches keep moto's SQS behaviour, and every patch refuses another moto."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws
from moto.sqs import models

from chalicelib import aws
from local import moto_patches


@pytest.fixture
def patched_sqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    moto_patches.sqs_speed(monkeypatch.setattr)  # undone by monkeypatch after the test
    with mock_aws():
        yield aws.client("sqs")


def test_visibility_and_receive_still_work(patched_sqs: Any) -> None:
    sqs: Any = patched_sqs
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    for i in range(25):
        sqs.send_message(QueueUrl=url, MessageBody=str(i))
    seen: list[str] = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            break
        seen += [m["Body"] for m in got]
    assert sorted(seen, key=int) == [str(i) for i in range(25)]  # each once: received ones are invisible


def test_messages_past_retention_are_not_delivered(patched_sqs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sqs: Any = patched_sqs
    url = sqs.create_queue(QueueName="r", Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="old")
    real = time.time
    monkeypatch.setattr(moto_patches.time, "time", lambda: real() + 61)
    assert sqs.receive_message(QueueUrl=url).get("Messages", []) == []
    monkeypatch.setattr(moto_patches.time, "time", real)


def test_unix_time_matches_moto_for_explicit_datetimes() -> None:
    import datetime

    moment = datetime.datetime(2026, 11, 28, 1, 2, 3, 456000)
    assert moto_patches._unix_time(moment) == pytest.approx(models.unix_time(moment))
    assert moto_patches._unix_time() == pytest.approx(time.time(), abs=1)


def test_a_send_does_not_scan_the_queue_and_the_counts_stay_right(
    patched_sqs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqs: Any = patched_sqs
    url = sqs.create_queue(QueueName="deep")["QueueUrl"]
    for i in range(50):
        sqs.send_message(QueueUrl=url, MessageBody=str(i))
    looked_at = [0]
    visible = models.Message.visible

    def counting_visible(message: Any) -> bool:
        looked_at[0] += 1
        return bool(visible.fget(message))  # type: ignore[attr-defined]

    monkeypatch.setattr(models.Message, "visible", property(counting_visible))
    sqs.send_message(QueueUrl=url, MessageBody="one more")
    assert looked_at[0] == 0  # stock moto looks at every queued message, twice, on each send
    sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "41"
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "10"
    assert attributes["ApproximateNumberOfMessagesDelayed"] == "0"


def test_content_based_deduplication_still_applies(patched_sqs: Any) -> None:
    sqs: Any = patched_sqs
    url = sqs.create_queue(QueueName="d.fifo", Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"})[
        "QueueUrl"
    ]
    for _ in range(3):
        sqs.send_message(QueueUrl=url, MessageBody="same", MessageGroupId="g")
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    assert [m["Body"] for m in got] == ["same"]


def test_the_patches_are_written_for_the_installed_moto() -> None:
    from importlib.metadata import version

    assert version("moto") == moto_patches.EXPECTED_MOTO  # the pins and the patches agree


@pytest.mark.parametrize("patch", [moto_patches.sqs_speed, moto_patches.atomic_writes, moto_patches.cached_routing])
def test_every_patch_refuses_another_moto_naming_both_versions(patch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "5.3.0" if name == "moto" else "0")
    applied: list[str] = []
    with pytest.raises(moto_patches.MotoVersionError, match=r"moto 5\.2\.5, but moto 5\.3\.0 is installed"):
        patch(lambda owner, name, value: applied.append(name))
    assert applied == []  # nothing was patched


def test_atomic_writes_serialise_concurrent_adds_to_one_item(monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    moto_patches.atomic_writes(monkeypatch.setattr)
    with mock_aws():
        db = aws.client("dynamodb")
        db.create_table(
            TableName="t",
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )

        def add(_: int) -> int:
            answer = db.update_item(
                TableName="t",
                Key={"k": {"S": "one"}},
                UpdateExpression="ADD n :one",
                ExpressionAttributeValues={":one": {"N": "1"}},
                ReturnValues="UPDATED_NEW",
            )
            return int(answer["Attributes"]["n"]["N"])

        with ThreadPoolExecutor(max_workers=8) as pool:
            seen = list(pool.map(add, range(100)))
    assert sorted(seen) == list(range(1, 101))  # each write saw the one before it
