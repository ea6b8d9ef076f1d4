"""A task function for end-to-end tests: the old service's task, or one that waits for a file.

``{"gate": path}`` holds its slot until ``path`` exists, so a test can queue
everything it needs before anything else starts, however slow the machine is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from chalicelib.tasks import TaskContext, limited_f


def gated(x: Any, ctx: TaskContext) -> Any:
    if isinstance(x, dict) and isinstance(x.get("gate"), str):
        gate = Path(x["gate"])
        deadline = time.monotonic() + 300
        while not gate.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gate {gate} never opened")
            time.sleep(0.05)
        return {"gate": "opened"}
    return limited_f(x, ctx)
