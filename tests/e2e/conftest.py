"""End-to-end fixtures: the local system, started per test and stopped after."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from local.process import LocalSystem, start_local_system


@pytest.fixture
def local_system(tmp_path: Path) -> Iterator[Callable[..., LocalSystem]]:
    started: list[LocalSystem] = []

    def start(**env: str) -> LocalSystem:
        # Tests read /stats right after what they change: uncached unless a test asks.
        system = start_local_system(tmp_path, **{"PQH_STATS_CACHE_SECONDS": "0", **env})
        started.append(system)
        return system

    yield start
    for system in started:
        system.stop()
