"""The scale model's one contact with the services: every import of them is here.

The services' modules and names may change; fix the imports here and nothing
else in bench/scale*.py needs to move. Two choices live here too:

- the worker's pool for picks ahead is an executor that runs the pick
  inline when it is submitted, so every AWS call of a worker runs on the
  worker's own (simulated) thread. Under the virtual clock a pick on a real
  thread pool would block the worker on a Future the clock cannot see. The cost:
  for tasks short enough to be prefetched, the next batch's pick (one write and a
  receive or two, about 15 ms) is paid before the last task of a batch instead of
  during it: at most one pick's latency per batch.
- a submit's side calls (its record's write and the dispatcher's nudge, made
  while the message is sent) run on the model's ``ClockExecutor``: a thread of the
  clock, waited for as the clock's sleep is, so they overlap in virtual time as on AWS.
- the worker's pauses (an outcome write tried again, a start tried again while a
  task's record lands) sleep on the model's clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from chalicelib.adapters.memory import MemoryControlStore, MemoryTaskQueues, MemoryTaskStore, MemoryUsageStore
from chalicelib.clock import StartTimer, Timer, WorkerClock
from chalicelib.domain import Handoff
from chalicelib.policy import LEVELS, Backlog, combined, shard_of
from chalicelib.services import Services
from chalicelib.settings import Settings

__all__ = [
    "LEVELS",
    "Backlog",
    "Handoff",
    "MemoryControlStore",
    "MemoryTaskQueues",
    "MemoryTaskStore",
    "MemoryUsageStore",
    "Services",
    "Settings",
    "StartTimer",
    "Timer",
    "build_services",
    "combined",
    "dispatch",
    "run_worker",
    "shard_of",
    "submit",
]


class InlineExecutor(Executor):
    """ThreadPoolExecutor's shape, running each job at once on the caller's thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # the worker sees it on .result(), as with a pool
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


def settings(capacity: int, task_seconds: float, **overrides: Any) -> Settings:
    """Settings for a model run: the deployed defaults, names filled in, limits that never bind."""
    values: dict[str, Any] = dict(
        tasks_table="model-tasks",
        usage_table="model-usage",
        control_table="model-control",
        queue_prefix="model",
        worker_function="model-worker",
        dispatcher_function="model-dispatcher",
        capacity=capacity,
        task_seconds=task_seconds,
        # The slot heartbeat is a real thread waiting lease/3 real seconds: a lease far
        # longer than any model run keeps it asleep (no slot is ever lost in the model).
        lease_seconds=10_000_000,
        max_queued_per_user=10_000_000,
    )
    values.update(overrides)
    return Settings(**values)


def build_services(
    config: Settings,
    usage: Any,
    tasks: Any,
    queues: Any,
    control: Any,
    invoker: Any,
    clock: Callable[[], float],
    monotonic: Callable[[], float],
    start_timer: StartTimer,
    task_function: Callable[[Any, Any], Any],
    side_pool: Callable[[], Executor] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> Services:
    return Services(
        settings=config,
        usage=usage,
        tasks=tasks,
        queues=queues,
        control=control,
        invoker=invoker,
        clock=clock,
        worker_clock=WorkerClock(monotonic=monotonic, start_timer=start_timer, sleep=sleep or time.sleep),
        pick_ahead_pool=InlineExecutor,
        side_pool=side_pool,
        task_function=task_function,
    )


def submit(services: Services, user_id: str, x: Any) -> Any:
    return services.submitting.submit(user_id, x)


def dispatch(services: Services) -> Any:
    return services.dispatching.dispatch()


def run_worker(services: Services, handoff: Handoff) -> Any:
    return services.worker.run(handoff)
