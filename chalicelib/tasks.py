"""The intensive function, pluggable through PQH_TASK_FUNCTION (a dotted path).

A task function takes ``(x, ctx)`` and returns a JSON-serialisable result; an
exception marks the task FAILURE with the exception's message.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TaskFunction = Callable[[Any, "TaskContext"], Any]


class TaskCancelledError(Exception):
    """Raised by a task function that stops because its task was cancelled."""


def _never() -> bool:
    return False


@dataclass(frozen=True)
class TaskContext:
    task_id: str
    user_id: str
    task_seconds: float
    cancelled: Callable[[], bool] = _never  # True once someone cancelled the running task


def cancellable(function: TaskFunction) -> TaskFunction:
    """Mark a task function that checks ``ctx.cancelled()`` and raises TaskCancelledError."""
    function.supports_cancel = True  # type: ignore[attr-defined]
    return function


def supports_cancel(function: TaskFunction) -> bool:
    return bool(getattr(function, "supports_cancel", False))


@cancellable
def limited_f(x: Any, ctx: TaskContext) -> dict[str, Any]:
    """The old service's task: sleep PQH_TASK_SECONDS, return the seed's result fields.

    It sleeps in steps of at most half a second, so a cancelled task stops soon.
    """
    init_timestamp = time.time()
    deadline = time.monotonic() + ctx.task_seconds
    while (left := deadline - time.monotonic()) > 0:
        if ctx.cancelled():
            raise TaskCancelledError(f"task {ctx.task_id} was cancelled")
        time.sleep(min(0.5, left))
    return {"init_timestamp": init_timestamp, "input_x": x, "done_timestamp": time.time()}


@cancellable
def fails_on_poison(x: Any, ctx: TaskContext) -> Any:
    """limited_f, except that x == "poison" always fails: for tests and the chaos script."""
    if x == "poison":
        raise RuntimeError(f"task {ctx.task_id} is poison: it always fails")
    return limited_f(x, ctx)


def always_fails(x: Any, ctx: TaskContext) -> Any:
    """A poison task, for tests and the chaos script."""
    raise RuntimeError(f"task {ctx.task_id} always fails")


def load_task_function(dotted: str) -> TaskFunction:
    """Resolve ``package.module.function`` (or ``package.module:function``)."""
    module_name, sep, attr = dotted.replace(":", ".").rpartition(".")
    if not sep or not module_name:
        raise ValueError(f"PQH_TASK_FUNCTION={dotted!r} must be a dotted path such as chalicelib.tasks.limited_f")
    function = getattr(importlib.import_module(module_name), attr, None)
    if not callable(function):
        raise ValueError(f"PQH_TASK_FUNCTION={dotted!r} does not name a callable")
    return function  # type: ignore[no-any-return]
