"""Giving messages back: SQS answers some entries of a batch as Failed; those are tried once more, then named."""

from __future__ import annotations

import logging
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from chalicelib.adapters.sqs import SqsTaskQueues

URL = "https://sqs.us-east-1.amazonaws.com/123456789012/pqh-level-1"


def _queues() -> tuple[SqsTaskQueues, Stubber]:
    client = boto3.client("sqs", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(client)
    stubber.add_response("get_queue_url", {"QueueUrl": URL}, {"QueueName": "pqh-level-1"})
    return SqsTaskQueues(client, lambda level: f"pqh-level-{level}"), stubber


def _entries(handles: dict[str, str], after: int = 0) -> dict[str, Any]:
    return {
        "QueueUrl": URL,
        "Entries": [{"Id": i, "ReceiptHandle": h, "VisibilityTimeout": after} for i, h in handles.items()],
    }


def _failed(i: str, code: str, sender_fault: bool) -> dict[str, Any]:
    return {"Id": i, "SenderFault": sender_fault, "Code": code, "Message": f"{code} for entry {i}"}


def test_an_entry_failed_by_sqs_is_tried_once_more_with_its_delay(caplog: pytest.LogCaptureFixture) -> None:
    queues, stubber = _queues()
    stubber.add_response(
        "change_message_visibility_batch",
        {"Successful": [{"Id": "0"}], "Failed": [_failed("1", "InternalError", False)]},
        _entries({"0": "h0", "1": "h1"}, after=1),
    )
    stubber.add_response(
        "change_message_visibility_batch", {"Successful": [{"Id": "1"}], "Failed": []}, _entries({"1": "h1"}, after=1)
    )
    with stubber, caplog.at_level(logging.WARNING):
        queues.give_back(1, ["h0", "h1"], after_seconds=1)
        stubber.assert_no_pending_responses()
    assert caplog.records == []


def test_an_entry_that_cannot_be_changed_is_not_retried_and_is_named(caplog: pytest.LogCaptureFixture) -> None:
    queues, stubber = _queues()
    stubber.add_response(
        "change_message_visibility_batch",
        {"Successful": [{"Id": "0"}], "Failed": [_failed("1", "ReceiptHandleIsInvalid", True)]},
        _entries({"0": "h0", "1": "h1"}),
    )
    with stubber, caplog.at_level(logging.WARNING):
        queues.give_back(1, ["h0", "h1"])
        stubber.assert_no_pending_responses()
    [warning] = caplog.records
    assert "gave back 1 of 2 messages of queue 1" in warning.getMessage()
    assert "ReceiptHandleIsInvalid" in warning.getMessage()


def test_an_entry_that_fails_twice_is_named_after_the_second_try(caplog: pytest.LogCaptureFixture) -> None:
    queues, stubber = _queues()
    for handles in ({"0": "h0"}, {"0": "h0"}):
        stubber.add_response(
            "change_message_visibility_batch",
            {"Successful": [], "Failed": [_failed("0", "InternalError", False)]},
            _entries(handles),
        )
    with stubber, caplog.at_level(logging.WARNING):
        queues.give_back(1, ["h0"])
        stubber.assert_no_pending_responses()
    [warning] = caplog.records
    assert "gave back 0 of 1 messages of queue 1" in warning.getMessage()
