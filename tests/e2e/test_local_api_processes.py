"""End to end: the API served by more than one process (PQH_API_PROCESSES), as Lambda scales out."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from local.process import LocalSystem, is_running

pytestmark = pytest.mark.e2e


def _api_processes(system: LocalSystem) -> list[int]:
    """The runner's extra API processes."""
    return [pid for pid, command in system.children().items() if "local.api" in command]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_for(what: str, ready: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ready()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_second_api_process_serves_requests_and_its_submits_nudge_the_dispatcher(
    local_system: Callable[..., LocalSystem],
) -> None:
    # The tick is a minute away and each task arrives on an idle system (the one
    # before it done, its worker gone): it starts within the test only if its own
    # submit's nudge reaches the dispatcher, whichever process answered it. Each
    # submit comes on a new connection, which either process may accept.
    system = local_system(PQH_API_PROCESSES="2", PQH_CAPACITY="2", PQH_TASK_SECONDS="0.01", PQH_TICK_SECONDS="60")
    (extra,) = _wait_for("the second API process", lambda: _api_processes(system))  # type: ignore[misc]
    assert "2 API processes" in system.log_path.read_text()
    time.sleep(2)  # its start-up (imports) is over
    cpu_before = _cpu_seconds(extra)
    for i in range(10):
        with requests.Session() as session:
            answer = session.post(f"{system.base_url}/task", json={"x": i, "user_id": f"u{i % 4}"}, timeout=30)
            assert answer.status_code == 202, answer.text
            task_id = answer.json()["task_id"]
            deadline = time.monotonic() + 15
            while session.get(f"{system.base_url}/result/{task_id}", timeout=30).json()["task_status"] != "SUCCESS":
                assert time.monotonic() < deadline, f"task {i} did not start: its submit's nudge was lost"
                time.sleep(0.05)
        time.sleep(0.3)  # its worker has stopped: the next task needs a nudge of its own
    # The second process answered its share (its CPU time grew by far more than idling).
    assert _cpu_seconds(extra) - cpu_before > 0.1


def test_an_api_process_killed_is_started_again(local_system: Callable[..., LocalSystem]) -> None:
    system = local_system(PQH_API_PROCESSES="2", PQH_TASK_SECONDS="0.01")
    (first,) = _wait_for("the second API process", lambda: _api_processes(system))  # type: ignore[misc]
    os.kill(first, signal.SIGKILL)
    (second,) = _wait_for("another API process", lambda: [p for p in _api_processes(system) if p != first])  # type: ignore[misc]
    assert second != first
    assert f"an API process (pid {first}) killed by SIGKILL; starting it again" in system.log_path.read_text()
    ids = [system.submit(f"u{i}", i)["task_id"] for i in range(10)]
    assert {r["task_status"] for r in system.wait_all(ids, timeout=60)} == {"SUCCESS"}
    assert system.process.poll() is None


def test_one_api_process_when_asked(local_system: Callable[..., LocalSystem]) -> None:
    system = local_system(PQH_API_PROCESSES="1", PQH_TASK_SECONDS="0.01")
    assert "1 API process)" in system.log_path.read_text()
    assert _api_processes(system) == []
    system.wait_all([system.submit("u", 1)["task_id"]], timeout=60)


def test_ctrl_c_stops_the_api_processes_through_the_runner_alone(local_system: Callable[..., LocalSystem]) -> None:
    # Ctrl-C reaches the whole process group. An API process that stopped on it by
    # itself could be seen dead, and started again, before the runner stops.
    system = local_system(PQH_API_PROCESSES="2", PQH_TASK_SECONDS="0.01")
    (extra,) = _wait_for("the second API process", lambda: _api_processes(system))  # type: ignore[misc]
    time.sleep(2)  # past its start-up
    os.kill(extra, signal.SIGINT)
    time.sleep(1.5)
    assert _api_processes(system) == [extra]
    os.kill(extra, signal.SIGINT)  # as the group's Ctrl-C: to it and to the runner at once
    assert system.stop() == 0
    _wait_for("the API process to exit", lambda: not is_running(extra))
    log = system.log_path.read_text()
    assert "an API process" not in log and "Traceback" not in log
