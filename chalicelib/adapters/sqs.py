"""SQS adapter: six standard queues, one per priority level; messages carry the task id."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from chalicelib.domain import QueuedMessage, Task

log = logging.getLogger(__name__)


class SqsTaskQueues:
    """Queue ``level`` is the queue named ``queue_name(level)``; URLs are looked up once."""

    def __init__(self, client: Any, queue_name: Callable[[int], str]) -> None:
        self._sqs = client
        self._queue_name = queue_name
        self._urls: dict[int, str] = {}
        self._lock = threading.Lock()

    def url(self, level: int) -> str:
        with self._lock:
            if level not in self._urls:
                self._urls[level] = self._sqs.get_queue_url(QueueName=self._queue_name(level))["QueueUrl"]
            return self._urls[level]

    def send(self, level: int, task: Task) -> None:
        body = {"task_id": task.task_id, "user_id": task.user_id, "submitted_at": task.submitted_at, "tag": task.tag}
        # MessageGroupId: on AWS, SQS fair queues keep one user's run of messages
        # from delaying other users' in the same queue (moto ignores it).
        self._sqs.send_message(QueueUrl=self.url(level), MessageBody=json.dumps(body), MessageGroupId=task.user_id)

    def receive(self, level: int, max_count: int, wait_seconds: int) -> list[QueuedMessage]:
        response = self._sqs.receive_message(
            QueueUrl=self.url(level),
            MaxNumberOfMessages=max(1, min(10, max_count)),
            WaitTimeSeconds=wait_seconds,
        )
        messages = []
        for raw in response.get("Messages", []):
            try:
                body = json.loads(raw["Body"])
                message = QueuedMessage(
                    task_id=str(body["task_id"]),
                    receipt_handle=raw["ReceiptHandle"],
                    user_id=str(body.get("user_id", "")),
                    submitted_at=float(body.get("submitted_at", 0.0)),
                    tag=float(body.get("tag", 0.0)),
                )
            except (ValueError, KeyError, TypeError, AttributeError):
                # Not ours (someone wrote to the queue by hand): drop it, say so.
                log.warning("dropping malformed message on level %s: %.200s", level, raw.get("Body"))
                self.delete(level, raw["ReceiptHandle"])
                continue
            messages.append(message)
        return messages

    def delete(self, level: int, receipt_handle: str) -> None:
        self._sqs.delete_message(QueueUrl=self.url(level), ReceiptHandle=receipt_handle)

    def give_back(self, level: int, receipt_handles: list[str]) -> None:
        for start in range(0, len(receipt_handles), 10):
            chunk = receipt_handles[start : start + 10]
            self._sqs.change_message_visibility_batch(
                QueueUrl=self.url(level),
                Entries=[
                    {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0} for i, handle in enumerate(chunk)
                ],
            )
