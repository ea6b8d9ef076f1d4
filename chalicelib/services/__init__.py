"""Services per concern, over one set of shared ports: what the entry points call.

submitting (POST /task), results (GET /result, DELETE /task), accounts (weights,
API keys, who a token is), operations (stats, dead letters, the retention
refresh), dispatching (the dispatcher Lambda and the tick) and the worker
(``chalicelib.worker``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor

from chalicelib.clock import WorkerClock
from chalicelib.deps import Deps
from chalicelib.ports import (
    AdminTokenSource,
    ControlStore,
    Idempotency,
    Invoker,
    KeyStore,
    TaskQueues,
    TaskStore,
    UsageStore,
)
from chalicelib.services.accounts import Accounts
from chalicelib.services.dispatching import Dispatching
from chalicelib.services.operations import Operations
from chalicelib.services.results import Results
from chalicelib.services.submitting import Submitting
from chalicelib.settings import Settings
from chalicelib.tasks import TaskFunction
from chalicelib.worker.loop import Worker


class Services:
    """Every service, built once over the same ``Deps`` (wiring.py caches one per settings)."""

    def __init__(
        self,
        settings: Settings,
        usage: UsageStore,
        tasks: TaskStore,
        queues: TaskQueues,
        control: ControlStore,
        invoker: Invoker,
        clock: Callable[[], float] = time.time,
        worker_clock: WorkerClock | None = None,
        pick_ahead_pool: Callable[[], Executor] | None = None,
        side_pool: Callable[[], Executor] | None = None,
        task_function: TaskFunction | None = None,
        keys: KeyStore | None = None,
        idempotency: Idempotency | None = None,
        admin_tokens: AdminTokenSource | None = None,
    ) -> None:
        self.deps = Deps(
            settings=settings,
            usage=usage,
            tasks=tasks,
            queues=queues,
            control=control,
            invoker=invoker,
            clock=clock,
            worker_clock=worker_clock or WorkerClock(),
            task_function=task_function,
            keys=keys,
            idempotency=idempotency,
            admin_tokens=admin_tokens,
        )
        if pick_ahead_pool is not None:
            self.deps.pick_ahead_pool = pick_ahead_pool
        if side_pool is not None:
            self.deps.side_pool_factory = side_pool
        self.submitting = Submitting(self.deps)
        self.results = Results(self.deps)
        self.accounts = Accounts(self.deps)
        self.operations = Operations(self.deps)
        self.dispatching = Dispatching(self.deps)
        self.worker = Worker(self.deps)

    @property
    def settings(self) -> Settings:
        return self.deps.settings
