"""local/fast_moto keeps moto's SQS behaviour while dropping its per-message scans."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws
from moto.sqs import models

from chalicelib import aws
from local import fast_moto

COUNTS = (
    "approximate_number_of_messages",
    "approximate_number_of_messages_delayed",
    "approximate_number_of_messages_not_visible",
)


@pytest.fixture
def patched_sqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(
        models.SQSBackend,
        "is_message_valid_based_on_retention_period",
        models.SQSBackend.is_message_valid_based_on_retention_period,
    )
    monkeypatch.setattr(models, "unix_time", models.unix_time)
    monkeypatch.setattr(models, "unix_time_millis", models.unix_time_millis)
    monkeypatch.setattr(models.SQSBackend, "send_message", models.SQSBackend.send_message)
    for name in COUNTS:
        monkeypatch.setattr(models.Queue, name, getattr(models.Queue, name))
    from moto.core import responses as core_responses
    from moto.core import utils as core_utils

    for module in (core_utils, core_responses, models):
        monkeypatch.setattr(module, "camelcase_to_underscores", module.camelcase_to_underscores)
    fast_moto.patch()  # undone by monkeypatch after the test
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
    monkeypatch.setattr(fast_moto.time, "time", lambda: real() + 61)
    assert sqs.receive_message(QueueUrl=url).get("Messages", []) == []
    monkeypatch.setattr(fast_moto.time, "time", real)


def test_unix_time_matches_moto_for_explicit_datetimes() -> None:
    import datetime

    moment = datetime.datetime(2026, 11, 28, 1, 2, 3, 456000)
    assert fast_moto._unix_time(moment) == pytest.approx(models.unix_time(moment))
    assert fast_moto._unix_time() == pytest.approx(time.time(), abs=1)


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
