"""Composition root: builds the services from settings, once per process.

The Lambda handlers, the local runner and the tests all get their services here.
The invoker is the only piece that differs between targets: Lambda on AWS or an
emulator, a thread pool in the local runner, a recorder in tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from chalicelib import aws
from chalicelib import settings as settings_mod
from chalicelib.adapters import secrets
from chalicelib.adapters.dynamo import DynamoControlStore, DynamoKeyStore, DynamoTaskStore, DynamoUsageStore
from chalicelib.adapters.idempotency import PowertoolsIdempotency
from chalicelib.adapters.lambda_ import LambdaInvoker
from chalicelib.adapters.sqs import SqsTaskQueues
from chalicelib.ports import Invoker
from chalicelib.services import Services
from chalicelib.settings import Settings

_lock = threading.Lock()
_cache: dict[Settings, Services] = {}
_invoker_factory: Callable[[Settings], Invoker] | None = None
_clock: Callable[[], float] = time.time


def configure(
    invoker_factory: Callable[[Settings], Invoker] | None = None, clock: Callable[[], float] | None = None
) -> None:
    """Replace the invoker (local runner, tests) and the clock (tests); clears the cache."""
    global _invoker_factory, _clock
    with _lock:
        _invoker_factory = invoker_factory
        _clock = clock or time.time
        _cache.clear()


def reset() -> None:
    configure(None, None)
    aws.reset()
    secrets.reset()


def build(settings: Settings) -> Services:
    if _invoker_factory is not None:
        invoker = _invoker_factory(settings)
    elif settings.handoff == "lambda":
        invoker = LambdaInvoker(aws.client("lambda"), settings.worker_function, settings.dispatcher_function)
    else:
        raise settings_mod.ConfigError("PQH_HANDOFF=local needs the local runner (make run)")
    dynamodb = aws.client("dynamodb")
    return Services(
        settings=settings,
        usage=DynamoUsageStore(dynamodb, settings.usage_table),
        tasks=DynamoTaskStore(dynamodb, settings.tasks_table, settings.backlog_shards),
        queues=SqsTaskQueues(aws.client("sqs"), settings.queue_name, settings.dlq_name),
        control=DynamoControlStore(dynamodb, settings.control_table),
        invoker=invoker,
        clock=_clock,
        keys=DynamoKeyStore(dynamodb, settings.control_table),
        idempotency=PowertoolsIdempotency(dynamodb, settings.tasks_table, settings.idempotency_seconds),
        # An SSM client only where a parameter is named: locally PQH_ADMIN_TOKEN is the token.
        admin_tokens=secrets.admin_token_source(
            settings, aws.client("ssm") if settings.admin_token_parameter else None
        ),
    )


def services() -> Services:
    """The services for the current environment's settings (built on first use)."""
    current = settings_mod.load()
    with _lock:
        existing = _cache.get(current)
        if existing is None:
            existing = build(current)
            _cache[current] = existing
        return existing
