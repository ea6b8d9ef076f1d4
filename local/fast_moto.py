"""moto's server, with fixes that keep SQS fast on deep queues, DynamoDB writes atomic, and calls cheap.

moto 5.2's ReceiveMessage checks each returned message's retention by calling
``get_queue_attributes``, which computes every attribute, three of them by
scanning the whole queue; and its clock helpers go through ``datetime`` on every
visibility check. Together a receive of 10 from a 1,000-message queue took about
0.6 s on a 2-core machine. SendMessage read every queue attribute (three scans of
the queue) to learn one flag: 1.8 ms of CPU per send with 650 messages queued.
The fixes keep moto's behaviour: the retention check reads the queue's retention
period directly, "now" comes from time.time(), a send skips the three counts, and
moto's pure name conversion is cached.

moto's DynamoDB writes read, change and store an item without a lock, so two
concurrent ``UpdateItem ... ADD`` requests on one item can both see the old value
(seen: 100 concurrent submissions gave two "first" counts). DynamoDB applies
each write to an item atomically; ``atomic_writes`` gives moto the same property
by running its write operations one at a time.

Per call, moto's own server opened a new connection (werkzeug's development
server closes every one) and rescanned its package and URL patterns under a
lock; here moto's application runs on waitress (keep-alive, a thread pool) with
the routing cached. A DynamoDB PutItem went from 3.7 to 2.0 ms, an SQS
SendMessage from 4.1 to 2.3 ms; 8 clients' submits from 34 to 50 a second.

    python -m local.fast_moto -H 127.0.0.1 -p 5000
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
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


_SENDING = threading.local()


def _skipped_while_sending(count: Any) -> Any:
    def wrapped(queue: Any) -> int:
        return 0 if getattr(_SENDING, "active", False) else int(count(queue))

    return functools.wraps(count)(wrapped)


def patch() -> None:
    """Apply the fixes to the imported moto SQS backend (idempotent)."""
    from moto.sqs import models

    def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
        queue = self.get_queue(queue_name)
        retain_until = int(queue.message_retention_period) + message.sent_timestamp / 1000
        return bool(retain_until > _unix_time())

    # SendMessage reads queue.attributes for one flag (ContentBasedDeduplication);
    # that computes every attribute, three of them by scanning the whole queue.
    # During a send the three message counts are not computed (nothing reads them).
    counts = (
        "approximate_number_of_messages",
        "approximate_number_of_messages_delayed",
        "approximate_number_of_messages_not_visible",
    )
    if not getattr(models.SQSBackend.send_message, "_pqh_cheap", False):
        for name in counts:
            setattr(models.Queue, name, property(_skipped_while_sending(getattr(models.Queue, name).fget)))
        original_send = models.SQSBackend.send_message

        def send_message(self: Any, *args: Any, **kwargs: Any) -> Any:
            _SENDING.active = True
            try:
                return original_send(self, *args, **kwargs)
            finally:
                _SENDING.active = False

        send_message._pqh_cheap = True  # type: ignore[attr-defined]
        functools.update_wrapper(send_message, original_send)
        models.SQSBackend.send_message = send_message  # type: ignore[method-assign]

    # camelcase_to_underscores is pure and was 15 calls (0.3 ms) of every SendMessage.
    from moto.core import responses as core_responses
    from moto.core import utils as core_utils

    if not hasattr(core_utils.camelcase_to_underscores, "cache_info"):
        cached = functools.lru_cache(maxsize=4096)(core_utils.camelcase_to_underscores)
        for module in (core_utils, core_responses, models):
            setattr(module, "camelcase_to_underscores", cached)  # noqa: B010

    setattr(models, "unix_time", _unix_time)  # noqa: B010 (a module global, not an attribute moto exports)
    setattr(models, "unix_time_millis", _unix_time_millis)  # noqa: B010
    models.SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period  # type: ignore[method-assign]


_WRITE_LOCK = threading.RLock()
_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items")


def atomic_writes() -> None:
    """Serialise moto's DynamoDB write operations, as DynamoDB's per-item atomicity requires (idempotent).

    UpdateItem's response handler is serialised too: it reads the item before the
    update to work out ReturnValues=UPDATED_NEW, and a write landing in between
    made it leave out attributes this update did change.
    """
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.responses import DynamoHandler

    targets = [(DynamoDBBackend, name) for name in _WRITES] + [(DynamoHandler, "update_item")]
    for owner, name in targets:
        original = getattr(owner, name)
        if getattr(original, "_pqh_atomic", False):
            continue

        def locked(*args: Any, __original: Any = original, **kwargs: Any) -> Any:
            with _WRITE_LOCK:
                return __original(*args, **kwargs)

        locked._pqh_atomic = True  # type: ignore[attr-defined]
        functools.update_wrapper(locked, original)
        setattr(owner, name, locked)


def fast_dispatch() -> None:
    """Route each request to its service without rescanning moto's package and URL patterns.

    moto's server lists its own package directory (about 200 entries) and tries
    hundreds of URL patterns for every request, under one lock: a few ms of every
    AWS call, serialised. The answers depend only on the host, so they are cached.
    """
    from moto import backends
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    if getattr(DomainDispatcherApplication.get_backend_for_host, "_pqh_cached", False):
        return
    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    original = DomainDispatcherApplication.get_backend_for_host
    cache: dict[str | None, Any] = {}

    def get_backend_for_host(self: Any, host: str | None) -> Any:
        if host not in cache:
            cache[host] = original(self, host)
        return cache[host]

    get_backend_for_host._pqh_cached = True  # type: ignore[attr-defined]
    DomainDispatcherApplication.get_backend_for_host = get_backend_for_host  # type: ignore[method-assign]


def serve(host: str, port: int, threads: int = 16) -> None:
    """moto's application on waitress: HTTP/1.1 keep-alive and a fixed thread pool.

    moto's own server (werkzeug's development server) closes the connection after
    every response, so each AWS call paid a new TCP connection and a new thread.
    """
    import logging
    import signal

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from waitress import serve as waitress_serve

    os.environ.setdefault("MOTO_PORT", str(port))
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" warnings under load
    app = DomainDispatcherApplication(create_backend_app)
    waitress_serve(app, host=host, port=port, threads=threads, channel_timeout=60, connection_limit=512, ident="moto")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="moto's server with pqh's speed fixes")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    patch()
    atomic_writes()
    fast_dispatch()
    if os.environ.get("PQH_EMULATOR_SERVER", "waitress") == "werkzeug":  # moto's own server, for comparisons
        from moto.server import main as moto_main

        moto_main(["-H", args.host, "-p", str(args.port)])
        return
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
