"""A task function for the fault tests: it writes each start and each completion to a journal file.

The journal (PQH_TEST_JOURNAL) is how a test outside the local system sees how
many times a task ran. While a hold file (the journal's name + ".hold") exists,
a task that has done its work waits before completing: a test that kills the
Lambda process then kills it mid-run, never in the instant between a task's
completion and the write of its outcome (the documented at-least-once window).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from chalicelib.tasks import TaskContext


def _append(journal: Path, line: str) -> None:
    # One write of a short line with O_APPEND: lines of concurrent writers never mix.
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def journaled(x: Any, ctx: TaskContext) -> dict[str, Any]:
    journal = Path(os.environ["PQH_TEST_JOURNAL"])
    _append(journal, f"start {ctx.task_id} {os.getpid()}")
    time.sleep(ctx.task_seconds)
    hold = Path(f"{journal}.hold")
    while hold.exists():
        time.sleep(0.02)
    _append(journal, f"end {ctx.task_id} {os.getpid()}")
    return {"input_x": x}
