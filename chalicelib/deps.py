"""What every service is given: the settings, the ports, the clocks and the task function."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

from chalicelib import policy
from chalicelib.clock import WorkerClock
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
from chalicelib.settings import ConfigError, Settings
from chalicelib.tasks import TaskFunction, load_task_function

log = logging.getLogger("pqh")

# SQS keeps a queued message this long (MessageRetentionPeriod in infra/resources.json).
QUEUE_RETENTION_SECONDS = 14 * 24 * 3600
# A worker drops a message that has no record once it is this old (by its submit
# time): its submit failed. A submit that has not written its record by half of it
# gives up, so no record can land after its message was dropped.
RECORD_GRACE_SECONDS = 60.0
SUBMIT_DEADLINE_SECONDS = RECORD_GRACE_SECONDS / 2


@dataclass
class Deps:
    """Shared by every service of a process, so a test that swaps one port or clock swaps it for all."""

    settings: Settings
    usage: UsageStore
    tasks: TaskStore
    queues: TaskQueues
    control: ControlStore
    invoker: Invoker
    clock: Callable[[], float] = time.time  # the wall clock: stamps records and leases
    worker_clock: WorkerClock = field(default_factory=WorkerClock)
    # Where a worker picks ahead while a task runs: one thread; tests run it by hand.
    pick_ahead_pool: Callable[[], Executor] = lambda: ThreadPoolExecutor(1, thread_name_prefix="prefetch")
    # Where a submit sends its message, notes a top user and nudges the dispatcher
    # while it writes its counts and record: built once per process (``side_pool``);
    # on Lambda a request uses three threads at most, the local server serves many
    # requests at once.
    side_pool_factory: Callable[[], Executor] = lambda: ThreadPoolExecutor(16, thread_name_prefix="submit-side")
    task_function: TaskFunction | None = None
    keys: KeyStore | None = None
    idempotency: Idempotency | None = None
    # The admin token's source (an SSM parameter on AWS); without one, PQH_ADMIN_TOKEN.
    admin_tokens: AdminTokenSource | None = None

    def admin_token(self) -> str:
        """The admin token now ('' when admin routes are disabled)."""
        if self.admin_tokens is None:
            return self.settings.admin_token
        return self.admin_tokens.admin_token()

    _side_pool: Executor | None = field(default=None, init=False, repr=False, compare=False)
    _side_pool_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def side_pool(self) -> Executor:
        """The process's pool for calls a request makes beside its own (built on first use, then kept)."""
        with self._side_pool_lock:
            if self._side_pool is None:
                self._side_pool = self.side_pool_factory()
            return self._side_pool

    def load_task_function(self) -> TaskFunction:
        if self.task_function is None:
            self.task_function = load_task_function(self.settings.task_function)
        return self.task_function

    def key_store(self) -> KeyStore:
        if self.keys is None:
            raise ConfigError("API keys need a key store")
        return self.keys

    def nudge_dispatcher(self) -> None:
        try:
            self.invoker.trigger_dispatch()
        except Exception:  # the scheduled tick is the safety net
            log.exception("could not trigger the dispatcher; the next tick will dispatch")


class Service:
    """A service over the shared ``Deps``: its ports are read through them, never copied."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @property
    def settings(self) -> Settings:
        return self.deps.settings

    @property
    def usage(self) -> UsageStore:
        return self.deps.usage

    @property
    def tasks(self) -> TaskStore:
        return self.deps.tasks

    @property
    def queues(self) -> TaskQueues:
        return self.deps.queues

    @property
    def control(self) -> ControlStore:
        return self.deps.control

    @property
    def clock(self) -> Callable[[], float]:
        return self.deps.clock

    def backlog_shard(self, shard: int) -> ControlStore:
        """The control store acting on backlog shard ``shard`` (the store itself for shard 0)."""
        return self.control if shard == 0 else self.control.shard(shard)

    def task_shard(self, task_id: str) -> ControlStore:
        """The control store acting on the backlog shard a task is counted in."""
        return self.backlog_shard(policy.shard_of(task_id, self.settings.backlog_shards))

    def _nudge_dispatcher(self) -> None:
        self.deps.nudge_dispatcher()
