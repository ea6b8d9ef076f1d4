"""Builders for services over in-memory fakes, with a clock the test moves."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace
from typing import Any

from chalicelib import views
from chalicelib.adapters.memory import (
    MemoryControlStore,
    MemoryTaskQueues,
    MemoryTaskStore,
    MemoryUsageStore,
    RecordingInvoker,
)
from chalicelib.clock import WorkerClock
from chalicelib.services import Services
from chalicelib.settings import Settings
from chalicelib.worker.loop import WorkerReport
from chalicelib.worker.picking import Picked

BASE_SETTINGS = Settings(
    tasks_table="t",
    usage_table="u",
    control_table="c",
    queue_prefix="q",
    worker_function="w",
    dispatcher_function="d",
    task_seconds=0.0,
    stats_cache_seconds=0.0,  # tests read stats right after what they change
)


@dataclass
class FakeClock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class ManualTimer:
    due: float
    fire: Callable[[], None]
    cancelled: bool = False
    fired: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    def join(self, timeout: float | None = None) -> None:
        """Firing is synchronous here: nothing to wait for."""


@dataclass
class ManualTimers:
    """A monotonic clock and one-shot timers that fire only when a test advances the clock."""

    now: float = 0.0
    started: list[ManualTimer] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    def start(self, delay: float, fire: Callable[[], None]) -> ManualTimer:
        timer = ManualTimer(self.now + delay, fire)
        self.started.append(timer)
        return timer

    def clock(self) -> WorkerClock:
        """The worker's clock on these timers; a pause moves the clock instead of waiting."""
        return WorkerClock(monotonic=self.monotonic, start_timer=self.start, sleep=self.advance)

    def advance(self, seconds: float) -> None:
        """Move the clock; every timer due by then fires, earliest first (one a firing sets too)."""
        self.now += seconds
        while True:
            due = [t for t in list(self.started) if not t.cancelled and not t.fired and t.due <= self.now]
            if not due:
                return
            timer = min(due, key=lambda t: t.due)
            timer.fired = True
            timer.fire()


class LazyFuture(Future[Any]):
    """A job that runs when a test runs it, or when its result is first asked for."""

    def __init__(self, job: Callable[[], Any]) -> None:
        super().__init__()
        self._job = job

    def run(self) -> None:
        if self.done():
            return
        try:
            self.set_result(self._job())
        except BaseException as exc:
            self.set_exception(exc)

    def result(self, timeout: float | None = None) -> Any:
        self.run()
        return super().result(timeout)


class ManualPool(Executor):
    """The worker's pick-ahead pool without a thread: a test says when the pick ahead happens."""

    def __init__(self) -> None:
        self.submitted: list[LazyFuture] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> LazyFuture:
        future = LazyFuture(lambda: fn(*args, **kwargs))
        self.submitted.append(future)
        return future

    def run_pending(self) -> None:
        """Run every pick ahead submitted so far, as if its thread ran now."""
        for future in list(self.submitted):
            future.run()


@dataclass
class World:
    services: Services
    clock: FakeClock
    usage: MemoryUsageStore
    tasks: MemoryTaskStore
    queues: MemoryTaskQueues
    control: MemoryControlStore
    invoker: RecordingInvoker
    timers: ManualTimers  # the worker's clock: its timers fire only when a test advances it
    pick_ahead: ManualPool  # the pick ahead runs when a test says, or when the worker needs its batch
    ran: list[str] = field(default_factory=list)

    def run_workers(self) -> list[WorkerReport]:
        """Run every worker the dispatcher started, one after another (as Lambda would, in parallel)."""
        return [self.services.worker.run(handoff) for handoff in self.invoker.take_handoffs()]

    def pick(self, backlog: Any = None, full_walk: bool = False, most: int = 1) -> list[Picked]:
        """One pick by a fresh worker's picker, as the worker loop makes it."""
        picks, _ = self.services.worker.picker().pick(backlog, full_walk, most=most)
        return picks

    def stats(self) -> dict[str, Any]:
        """GET /stats as the API answers it."""
        return views.stats(self.services.operations.stats())

    def outcomes(self) -> list[str]:
        return [outcome for report in self.run_workers() for outcome in report.outcomes]

    def level_of(self, task_id: str) -> int:
        task = self.tasks.get(task_id)
        assert task is not None
        return task.priority_level


def make_world(flaky_short_poll: bool = False, short_poll_most: int | None = None, **overrides: Any) -> World:
    clock = FakeClock()
    timers = ManualTimers()
    pick_ahead = ManualPool()
    usage, tasks, control, invoker = MemoryUsageStore(), MemoryTaskStore(), MemoryControlStore(), RecordingInvoker()
    queues = MemoryTaskQueues(clock=clock, flaky_short_poll=flaky_short_poll, short_poll_most=short_poll_most)
    world = World(
        services=Services(
            settings=replace(BASE_SETTINGS, **overrides),
            usage=usage,
            tasks=tasks,
            queues=queues,
            control=control,
            invoker=invoker,
            clock=clock,
            worker_clock=timers.clock(),
            pick_ahead_pool=lambda: pick_ahead,
        ),
        clock=clock,
        timers=timers,
        pick_ahead=pick_ahead,
        usage=usage,
        tasks=tasks,
        queues=queues,
        control=control,
        invoker=invoker,
    )

    def record(x: Any, ctx: Any) -> dict[str, Any]:
        world.ran.append(ctx.task_id)
        return {"init_timestamp": clock.now, "input_x": x, "done_timestamp": clock.now}

    world.services.deps.task_function = record
    return world


def record_takes(w: World) -> list[int]:
    """The tasks each committed pick of ``w``'s control store takes, in order, as they happen."""
    takes: list[int] = []
    commit = w.control.commit_pick

    def counted_commit(seen: Any, after: Any, wanted: Any, *args: Any) -> Any:
        taken, state = commit(seen, after, wanted, *args)
        if taken:
            takes.append(sum(wanted.values()))
        return taken, state

    w.control.commit_pick = counted_commit  # type: ignore[method-assign]
    return takes
