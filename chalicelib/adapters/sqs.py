"""SQS adapter: six standard queues, one per priority level; messages carry the task id."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.domain import ConflictError, QueueDepth, QueuedMessage, Task

log = logging.getLogger(__name__)


# Dead-letter queues are numbered after the six level queues in the URL cache.
DEAD = 100

# SQS takes 1-128 ASCII letters, digits and punctuation as a MessageGroupId:
# exactly the visible ASCII characters, \x21-\x7e.
GROUP_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")
DIGEST_PREFIX = "~sha256:"


def message_group_id(user_id: str) -> str:
    """A user's MessageGroupId: always one SQS accepts, and one per user.

    An id SQS accepts is its own group id, unless it starts with DIGEST_PREFIX; any
    other id (a space, a non-ASCII letter, over 128 characters) is DIGEST_PREFIX and
    the SHA-256 of its UTF-8 bytes in hex (72 characters). An id kept as it is never
    starts with the prefix, a digest always does, so two users share a group id only
    if their ids share a SHA-256.
    """
    if GROUP_ID_RE.fullmatch(user_id) and not user_id.startswith(DIGEST_PREFIX):
        return user_id
    return DIGEST_PREFIX + hashlib.sha256(user_id.encode("utf-8")).hexdigest()


def _parse(raw: dict[str, Any]) -> QueuedMessage:
    body = json.loads(raw["Body"])
    return QueuedMessage(
        task_id=str(body["task_id"]),
        receipt_handle=raw["ReceiptHandle"],
        user_id=str(body.get("user_id", "")),
        submitted_at=float(body.get("submitted_at", 0.0)),
        tag=float(body.get("tag", 0.0)),
        reason=str(body.get("reason", "")),
    )


class SqsTaskQueues:
    """Queue ``level`` is the queue named ``queue_name(level)``; URLs are looked up once.

    Each level's dead-letter queue is ``dlq_name(level)``: SQS moves a message there
    after too many receives, and the worker moves a failed task's message there.
    """

    def __init__(
        self, client: Any, queue_name: Callable[[int], str], dlq_name: Callable[[int], str] | None = None
    ) -> None:
        self._sqs = client
        self._queue_name = queue_name
        self._dlq_name = dlq_name or (lambda level: f"{queue_name(level)}-dlq")
        self._urls: dict[int, str] = {}
        self._lock = threading.Lock()

    def url(self, level: int) -> str:
        with self._lock:
            if level not in self._urls:
                name = self._dlq_name(level - DEAD) if level >= DEAD else self._queue_name(level)
                self._urls[level] = self._sqs.get_queue_url(QueueName=name)["QueueUrl"]
            return self._urls[level]

    def send(self, level: int, task: Task) -> None:
        body = {"task_id": task.task_id, "user_id": task.user_id, "submitted_at": task.submitted_at, "tag": task.tag}
        # MessageGroupId: on AWS, SQS fair queues keep one user's run of messages
        # from delaying other users' in the same queue (moto ignores it).
        self._sqs.send_message(
            QueueUrl=self.url(level), MessageBody=json.dumps(body), MessageGroupId=message_group_id(task.user_id)
        )

    def receive(self, level: int, max_count: int, wait_seconds: int) -> list[QueuedMessage]:
        return self._receive(level, max_count, WaitTimeSeconds=wait_seconds)

    def _receive(self, queue: int, max_count: int, **kwargs: Any) -> list[QueuedMessage]:
        response = self._sqs.receive_message(
            QueueUrl=self.url(queue), MaxNumberOfMessages=max(1, min(10, max_count)), **kwargs
        )
        messages = []
        for raw in response.get("Messages", []):
            try:
                message = _parse(raw)
            except (ValueError, KeyError, TypeError, AttributeError):
                # Not ours (someone wrote to the queue by hand): drop it, say so.
                log.warning("dropping malformed message on queue %s: %.200s", queue, raw.get("Body"))
                self._sqs.delete_message(QueueUrl=self.url(queue), ReceiptHandle=raw["ReceiptHandle"])
                continue
            messages.append(message)
        return messages

    def delete(self, level: int, receipt_handle: str) -> None:
        self._sqs.delete_message(QueueUrl=self.url(level), ReceiptHandle=receipt_handle)

    def delete_many(self, level: int, receipt_handles: list[str]) -> None:
        for start in range(0, len(receipt_handles), 10):
            chunk = receipt_handles[start : start + 10]
            response = self._sqs.delete_message_batch(
                QueueUrl=self.url(level),
                Entries=[{"Id": str(i), "ReceiptHandle": handle} for i, handle in enumerate(chunk)],
            )
            for failed in response.get("Failed", []):
                # Its message comes back after the visibility timeout, and its task is
                # found finished then: a wasted delivery, never a second run.
                log.warning("level %d: a message was not deleted (%s)", level, failed.get("Code"))

    def depths(self) -> list[QueueDepth]:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        found = []
        for level in range(6):
            live = self._sqs.get_queue_attributes(QueueUrl=self.url(level), AttributeNames=names)["Attributes"]
            dead = self._sqs.get_queue_attributes(QueueUrl=self.url(DEAD + level), AttributeNames=names[:1])
            found.append(
                QueueDepth(
                    level=level,
                    queued=int(live.get(names[0], 0)),
                    in_flight=int(live.get(names[1], 0)),
                    dead=int(dead["Attributes"].get(names[0], 0)),
                )
            )
        return found

    def send_dead(self, level: int, message: QueuedMessage, reason: str) -> None:
        body = {
            "task_id": message.task_id,
            "user_id": message.user_id,
            "submitted_at": message.submitted_at,
            "tag": message.tag,
            "reason": reason[:1000],
        }
        self._sqs.send_message(QueueUrl=self.url(DEAD + level), MessageBody=json.dumps(body))

    def receive_dead(self, level: int, max_count: int, hide_seconds: int) -> list[QueuedMessage]:
        return self._receive(DEAD + level, max_count, WaitTimeSeconds=0, VisibilityTimeout=hide_seconds)

    def delete_dead(self, level: int, receipt_handle: str) -> None:
        self._sqs.delete_message(QueueUrl=self.url(DEAD + level), ReceiptHandle=receipt_handle)

    def purge_dead(self, level: int) -> int:
        url = self.url(DEAD + level)
        attributes = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        try:
            self._sqs.purge_queue(QueueUrl=url)
        except ClientError as exc:
            if "PurgeQueueInProgress" in str(exc.response.get("Error", {}).get("Code", "")):
                raise ConflictError("this dead-letter queue was purged less than 60 s ago; try again later") from exc
            raise
        return int(attributes["Attributes"].get("ApproximateNumberOfMessages", 0))

    def give_back(self, level: int, receipt_handles: list[str], after_seconds: int = 0) -> None:
        # An entry SQS could not change (its Failed list) would stay hidden for the
        # visibility timeout: one more try for those that were not the caller's fault,
        # then a warning naming what is left.
        for start in range(0, len(receipt_handles), 10):
            pending = dict(enumerate(receipt_handles[start : start + 10]))
            for attempt in range(2):
                response = self._sqs.change_message_visibility_batch(
                    QueueUrl=self.url(level),
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": after_seconds}
                        for i, handle in pending.items()
                    ],
                )
                failed = response.get("Failed") or []
                retry = {int(f["Id"]) for f in failed if not f.get("SenderFault") and attempt == 0}
                if len(failed) > len(retry):
                    log.warning(
                        "gave back %d of %d messages of queue %d; the rest return after their visibility timeout: %s",
                        len(pending) - len(failed),
                        len(pending),
                        level,
                        "; ".join(f"{f.get('Code')}: {f.get('Message', '')}" for f in failed),
                    )
                if not retry:
                    break
                pending = {k: pending[k] for k in retry}
