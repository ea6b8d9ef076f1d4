"""moto's server, with two fixes that keep SQS fast on deep queues and one for DynamoDB.

moto 5.2's ReceiveMessage checks each returned message's retention by calling
``get_queue_attributes``, which computes every attribute, three of them by
scanning the whole queue; and its clock helpers go through ``datetime`` on every
visibility check. Together a receive of 10 from a 1,000-message queue took about
0.6 s on a 2-core machine. The fixes keep moto's behaviour: the retention check
reads the queue's retention period directly, and "now" comes from time.time().

moto's DynamoDB writes read, change and store an item without a lock, so two
concurrent ``UpdateItem ... ADD`` requests on one item can both see the old value
(seen: 100 concurrent submissions gave two "first" counts). DynamoDB applies
each write to an item atomically; ``atomic_writes`` gives moto the same property
by running its write operations one at a time.

    python -m local.fast_moto -H 127.0.0.1 -p 5000
"""

from __future__ import annotations

import datetime
import functools
import sys
import threading
import time
from typing import Any


def _unix_time(dt: datetime.datetime | None = None) -> float:
    if dt is None:
        return time.time()
    epoch = datetime.datetime(1970, 1, 1)
    return (dt - epoch).total_seconds()


def _unix_time_millis(dt: datetime.datetime | None = None) -> float:
    return _unix_time(dt) * 1000.0


def patch() -> None:
    """Apply the fixes to the imported moto SQS backend (idempotent)."""
    from moto.sqs import models

    def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
        queue = self.get_queue(queue_name)
        retain_until = int(queue.message_retention_period) + message.sent_timestamp / 1000
        return bool(retain_until > _unix_time())

    setattr(models, "unix_time", _unix_time)  # noqa: B010 (a module global, not an attribute moto exports)
    setattr(models, "unix_time_millis", _unix_time_millis)  # noqa: B010
    models.SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period  # type: ignore[method-assign]


_WRITE_LOCK = threading.RLock()
_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items")


def atomic_writes() -> None:
    """Serialise moto's DynamoDB write operations, as DynamoDB's per-item atomicity requires (idempotent)."""
    from moto.dynamodb.models import DynamoDBBackend

    for name in _WRITES:
        original = getattr(DynamoDBBackend, name)
        if getattr(original, "_pqh_atomic", False):
            continue

        def locked(*args: Any, __original: Any = original, **kwargs: Any) -> Any:
            with _WRITE_LOCK:
                return __original(*args, **kwargs)

        locked._pqh_atomic = True  # type: ignore[attr-defined]
        functools.update_wrapper(locked, original)
        setattr(DynamoDBBackend, name, locked)


def main(argv: list[str] | None = None) -> None:
    patch()
    atomic_writes()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
