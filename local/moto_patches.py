"""Every patch pqh applies to moto's internals, each with the reason it exists.

The patches reach into private parts of one moto release, so they are checked
against it: on any other moto every patch stops with ``MotoVersionError`` naming
the expected and the installed version, instead of failing later far from the
cause. To move to a new moto, check each patch below against its source, drop
the ones it no longer needs, and change ``EXPECTED_MOTO`` (requirements-dev.txt
and constraints.txt pin the same version).

Who uses which:

- ``sqs_speed``, ``cached_routing``: speed only, moto's behaviour unchanged
  (tests/contract/test_moto_patches.py). The embedded emulator of the local
  runner (local/moto_server.py), the chaos run and the benchmarks.
- ``atomic_writes``: correctness. moto's DynamoDB writes are not atomic across
  threads, DynamoDB's are. The emulator, the chaos run, the requests-per-task
  benchmark, and the functional tests that send requests from several threads at
  once; the rest of the functional suite runs on stock moto.

Each patch takes the ``setattr`` to apply itself with: the default makes it
permanent (a server process); a test passes ``monkeypatch.setattr`` so that it
is undone after the test. Each is idempotent.
"""

from __future__ import annotations

import datetime
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

EXPECTED_MOTO = "5.2.5"

Setter = Callable[[Any, str, Any], None]


class MotoVersionError(RuntimeError):
    """The installed moto is not the release whose internals these patches were written for."""


def check_moto_version() -> None:
    """Stop with a clear message on any moto but ``EXPECTED_MOTO``."""
    from importlib.metadata import version

    found = version("moto")
    if found != EXPECTED_MOTO:
        raise MotoVersionError(
            f"local/moto_patches.py patches the internals of moto {EXPECTED_MOTO}, but moto {found} is installed: "
            f"install moto=={EXPECTED_MOTO} (make venv), or check each patch against moto {found} "
            "and then change EXPECTED_MOTO"
        )


# --- SQS: receives and sends that do not scan the whole queue ----------------------------


def _unix_time(dt: datetime.datetime | None = None) -> float:
    if dt is None:
        return time.time()
    epoch = datetime.datetime(1970, 1, 1)
    return (dt - epoch).total_seconds()


def _unix_time_millis(dt: datetime.datetime | None = None) -> float:
    return _unix_time(dt) * 1000.0


_SENDING = threading.local()
_COUNTS = (
    "approximate_number_of_messages",
    "approximate_number_of_messages_delayed",
    "approximate_number_of_messages_not_visible",
)


def _skipped_while_sending(count: Any) -> Any:
    def wrapped(queue: Any) -> int:
        return 0 if getattr(_SENDING, "active", False) else int(count(queue))

    return functools.wraps(count)(wrapped)


def sqs_speed(setter: Setter = setattr) -> None:
    """Keep moto's SQS fast on deep queues, with its behaviour unchanged.

    Why: moto's ReceiveMessage checks each returned message's retention by
    calling ``get_queue_attributes``, which computes every attribute, three of
    them by scanning the whole queue; its clock helpers go through ``datetime``
    on every visibility check. A receive of 10 from a 1,000-message queue took
    about 0.6 s on a 2-core machine. SendMessage reads every queue attribute
    (three scans) to learn one flag: 1.8 ms of CPU per send with 650 queued.
    The fixes: the retention check reads the queue's retention period directly,
    "now" comes from ``time.time()``, a send skips the three counts (nothing
    reads them during a send), and moto's pure name conversion is cached
    (15 calls, 0.3 ms, of every SendMessage).
    """
    check_moto_version()
    from moto.core import responses as core_responses
    from moto.core import utils as core_utils
    from moto.sqs import models

    def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
        queue = self.get_queue(queue_name)
        retain_until = int(queue.message_retention_period) + message.sent_timestamp / 1000
        return bool(retain_until > _unix_time())

    if not getattr(models.SQSBackend.send_message, "_pqh_cheap", False):
        for name in _COUNTS:
            setter(models.Queue, name, property(_skipped_while_sending(getattr(models.Queue, name).fget)))
        original_send = models.SQSBackend.send_message

        def send_message(self: Any, *args: Any, **kwargs: Any) -> Any:
            _SENDING.active = True
            try:
                return original_send(self, *args, **kwargs)
            finally:
                _SENDING.active = False

        send_message._pqh_cheap = True  # type: ignore[attr-defined]
        functools.update_wrapper(send_message, original_send)
        setter(models.SQSBackend, "send_message", send_message)

    if not hasattr(core_utils.camelcase_to_underscores, "cache_info"):
        cached = functools.lru_cache(maxsize=4096)(core_utils.camelcase_to_underscores)
        for module in (core_utils, core_responses, models):
            setter(module, "camelcase_to_underscores", cached)

    setter(models, "unix_time", _unix_time)
    setter(models, "unix_time_millis", _unix_time_millis)
    setter(models.SQSBackend, "is_message_valid_based_on_retention_period", is_message_valid_based_on_retention_period)


# --- DynamoDB: writes one at a time, as DynamoDB applies each atomically -----------------

_WRITE_LOCK = threading.RLock()
_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items")


def atomic_writes(setter: Setter = setattr) -> None:
    """Serialise moto's DynamoDB write operations, as DynamoDB's per-item atomicity requires.

    Why: moto's writes read, change and store an item without a lock, so two
    concurrent ``UpdateItem ... ADD`` on one item can both see the old value
    (seen: 100 concurrent submissions gave two "first" counts). UpdateItem's
    response handler is serialised too: it reads the item before the update to
    work out ``ReturnValues=UPDATED_NEW``, and a write landing in between made it
    leave out attributes this update did change (500s under 8 clients).
    """
    check_moto_version()
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
        setter(owner, name, locked)


# --- The server: routing without rescanning moto's package per request -------------------


def cached_routing(setter: Setter = setattr) -> None:
    """Route each request of moto's server to its service without rescanning moto's package and URL patterns.

    Why: moto's server lists its own package directory (about 200 entries) and
    tries hundreds of URL patterns for every request, under one lock: a few ms
    of every AWS call, serialised. The answers depend only on the host, so they
    are cached.
    """
    check_moto_version()
    from moto import backends
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    if getattr(DomainDispatcherApplication.get_backend_for_host, "_pqh_cached", False):
        return
    modules = tuple(backends.list_of_moto_modules())
    setter(backends, "list_of_moto_modules", lambda: modules)
    original = DomainDispatcherApplication.get_backend_for_host
    cache: dict[str | None, Any] = {}

    def get_backend_for_host(self: Any, host: str | None) -> Any:
        if host not in cache:
            cache[host] = original(self, host)
        return cache[host]

    get_backend_for_host._pqh_cached = True  # type: ignore[attr-defined]
    setter(DomainDispatcherApplication, "get_backend_for_host", get_backend_for_host)


def apply_all() -> None:
    """Every patch, for good: what the local runner's moto server and the chaos run use."""
    sqs_speed()
    atomic_writes()
    cached_routing()
