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


@pytest.fixture
def patched_sqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(
        models.SQSBackend,
        "is_message_valid_based_on_retention_period",
        models.SQSBackend.is_message_valid_based_on_retention_period,
    )
    monkeypatch.setattr(models, "unix_time", models.unix_time)
    monkeypatch.setattr(models, "unix_time_millis", models.unix_time_millis)
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
