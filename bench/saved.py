"""Where a benchmark's results go: the latest run under a stable name, every run also timestamped.

``bench/results/<name>-latest.json`` is the one committed (docs/benchmarks.md
quotes it); ``bench/results/runs/<name>-<UTC stamp>.json`` keeps each run for
comparing runs on one machine, and git ignores that folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "runs"


def save(name: str, report: Any) -> Path:
    """Write ``report`` as the latest ``name`` result and as a timestamped run; returns the latest's path."""
    text = json.dumps(report, indent=2) + "\n"
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json").write_text(text)
    latest = RESULTS / f"{name}-latest.json"
    latest.write_text(text)
    return latest


def shown(path: Path) -> str:
    """A results path as the repository names it (bench/results/...), never the machine's."""
    return str(path.relative_to(RESULTS.parent.parent))
