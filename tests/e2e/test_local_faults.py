"""End to end: the local system's processes killed with SIGKILL from outside, as on a user's machine.

The Lambda process (dispatcher, workers, the schedule) is killed mid-run, twice
in a row, and during a burst of submits. The runner restarts it; the work it
held comes back as on AWS (slot leases, the queues' visibility timeout, task run
leases, the schedule), time-compressed with the settings; submits go on being
accepted while it is down and run once it is back. Tasks write every start and
completion to a journal (tests/e2e/journal_task.py), so the test sees from
outside that every task completed exactly once.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from local.process import LocalSystem, is_running

pytestmark = pytest.mark.e2e

T = TypeVar("T")
BACK = "the local Lambda process is running again"


def _lambda_process(system: LocalSystem) -> int | None:
    pids = [pid for pid, command in system.children().items() if "local.lambdas" in command]
    return pids[0] if pids else None


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.hold = Path(f"{path}.hold")

    def lines(self) -> list[tuple[str, str, int]]:
        if not self.path.exists():
            return []
        return [
            (event, task_id, int(pid))
            for event, task_id, pid in (line.split() for line in self.path.read_text().splitlines())
        ]

    def ended(self) -> Counter[str]:
        return Counter(task_id for event, task_id, _ in self.lines() if event == "end")

    def running_in(self, pid: int) -> set[str]:
        """Tasks a process started and has not completed."""
        lines = self.lines()
        ended = {task_id for event, task_id, _ in lines if event == "end"}
        return {task_id for event, task_id, p in lines if event == "start" and p == pid and task_id not in ended}

    def started_by(self, pid: int) -> set[str]:
        return {task_id for event, task_id, p in self.lines() if event == "start" and p == pid}

    def ended_by(self, task_id: str) -> list[int]:
        return [pid for event, t, pid in self.lines() if event == "end" and t == task_id]


def _wait_for(what: str, check: Callable[[], T], system: LocalSystem, timeout: float = 120.0) -> T:
    """Wait, with a generous deadline, until ``check()`` returns something true; return it."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}; log: {system.log_path.read_text()[-4000:]}")
        time.sleep(0.1)


def test_the_lambda_process_killed_mid_run_twice_and_in_a_burst_loses_nothing_and_runs_nothing_twice(
    local_system: Callable[..., LocalSystem], tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "journal.txt")
    system = local_system(
        PQH_CAPACITY="2",
        PQH_TASK_SECONDS="0.3",
        PQH_TASK_FUNCTION="tests.e2e.journal_task.journaled",
        PQH_TEST_JOURNAL=str(journal.path),
        # Time-compressed: slots free 3 s after their worker died, the schedule ticks
        # every second, a received message comes back after 8 s, a started task may
        # start again 6 s after its run began.
        PQH_LEASE_SECONDS="3",
        PQH_TICK_SECONDS="1",
        PQH_VISIBILITY_SECONDS="8",
        PQH_RUN_LEASE_SECONDS="6",
    )
    successes: set[str] = set()

    def outcomes_recorded() -> bool:
        """Every task that completed has its outcome written: none is between the two."""
        for task_id in journal.ended():
            if task_id not in successes and system.result(task_id)["task_status"] == "SUCCESS":
                successes.add(task_id)
        return set(journal.ended()) <= successes

    def submit_while_down(first: int) -> list[str]:
        """Submit six tasks; those answered before the runner logs the process back came while it was down."""
        backs = system.log_path.read_text().count(BACK)
        down: list[str] = []
        for i in range(6):
            task_id = system.submit(f"late_{i}", f"late-{first}-{i}")["task_id"]  # 202, or it raises
            if system.log_path.read_text().count(BACK) == backs:
                down.append(task_id)
            submitted.append(task_id)
        return down

    submitted = [system.submit(f"user_{i % 4}", i)["task_id"] for i in range(20)]
    _wait_for("three tasks complete", lambda: len(journal.ended()) >= 3, system)

    # 1. Killed mid-run: tasks are running in it (held before completing).
    journal.hold.touch()
    first = _wait_for("the Lambda process", lambda: _lambda_process(system), system)
    cut = _wait_for("a task running", lambda: journal.running_in(first), system)
    _wait_for("finished tasks recorded", outcomes_recorded, system)
    cut = journal.running_in(first)
    os.kill(first, signal.SIGKILL)
    while_down = submit_while_down(first)

    # 2. Twice in a row: the restarted process is killed as soon as it runs tasks again.
    second = _wait_for(
        "a restarted Lambda process running tasks",
        lambda: next((p for p in [_lambda_process(system)] if p and p != first and journal.running_in(p)), None),
        system,
    )
    _wait_for("finished tasks recorded", outcomes_recorded, system)
    os.kill(second, signal.SIGKILL)
    while_down += submit_while_down(second)
    journal.hold.unlink()

    # 3. During a burst: four clients submit 40 tasks; the process dies after ten are accepted.
    _wait_for("the Lambda process back twice", lambda: system.log_path.read_text().count(BACK) >= 2, system)
    third = _wait_for("the Lambda process", lambda: _lambda_process(system), system)
    journal.hold.touch()
    _wait_for("finished tasks recorded", outcomes_recorded, system)
    accepted: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        task_id = system.submit(f"burst_{i % 6}", f"burst-{i}")["task_id"]
        with lock:
            accepted.append(task_id)

    with ThreadPoolExecutor(4) as pool:
        burst = [pool.submit(client, i) for i in range(40)]
        _wait_for("ten burst submits accepted", lambda: len(accepted) >= 10, system)
        os.kill(third, signal.SIGKILL)
        journal.hold.unlink()
        for future in burst:
            future.result()  # every submit answered 202
    submitted += accepted

    # Every accepted task completes exactly once, including those submitted while it was down.
    results = system.wait_all(submitted, timeout=240)
    assert {r["task_status"] for r in results} == {"SUCCESS"}
    ended = journal.ended()
    assert set(ended) == set(submitted)
    assert [task_id for task_id, n in ended.items() if n != 1] == []
    assert while_down, "no submit was answered while the Lambda process was down"
    # The tasks cut off by the first kill ran again in a later process.
    assert cut and all(journal.ended_by(task_id) != [first] for task_id in cut)
    assert len(journal.started_by(first)) > 0 and len(journal.started_by(second)) > 0

    log = system.log_path.read_text()
    assert "is not running" not in log
    assert "Traceback" not in log
    # The calls the killed process had under way did not take the DynamoDB emulator with it.
    assert "dynalite (DynamoDB)" not in log


def _emulator_process(system: LocalSystem, marker: str) -> int:
    pids = [pid for pid, command in system.children().items() if marker in command]
    assert len(pids) == 1, system.children()
    return pids[0]


def test_dynalite_killed_is_started_again_with_its_tables(local_system: Callable[..., LocalSystem]) -> None:
    # Time-compressed as above: a worker whose DynamoDB call failed while dynalite was
    # down (more likely on a loaded machine, where the restart takes longer) gives its
    # slot back within seconds, not the default minute that outlasts the wait below.
    system = local_system(
        PQH_TASK_SECONDS="0.05",
        PQH_CAPACITY="2",
        PQH_LEASE_SECONDS="3",
        PQH_TICK_SECONDS="1",
        PQH_VISIBILITY_SECONDS="8",
        PQH_RUN_LEASE_SECONDS="6",
    )
    before = [system.submit("alice", i)["task_id"] for i in range(4)]
    system.wait_all(before, timeout=60)

    os.kill(_emulator_process(system, "dynalite"), signal.SIGKILL)
    _wait_for(
        "dynalite running again",
        lambda: "dynalite (DynamoDB) is running again" in system.log_path.read_text(),
        system,
    )

    # The records written before the kill are still there; new tasks run.
    assert {system.result(task_id)["task_status"] for task_id in before} == {"SUCCESS"}
    after = [system.submit("bob", i)["task_id"] for i in range(4)]
    assert {r["task_status"] for r in system.wait_all(after, timeout=60)} == {"SUCCESS"}
    assert system.http.get(f"{system.base_url}/stats", timeout=30).json()["tasks"]["submitted"] == 8
    assert system.process.poll() is None


def test_dynalite_serves_on_when_a_client_goes_away_mid_request() -> None:
    """A process killed mid-call (its request cut off) leaves the DynamoDB emulator serving everyone else.

    dynalite's own handler rethrows an aborted request's error and exits; the
    launcher the runner starts it with (local/node/dynalite.js) ignores that one error.
    """
    import boto3

    from local.emulator import DynaliteServer
    from local.process import free_port

    server = DynaliteServer("127.0.0.1", free_port())
    server.start(timeout=30)
    try:
        cut_off = (
            b"POST / HTTP/1.1\r\nHost: dynamodb\r\nContent-Type: application/x-amz-json-1.0\r\n"
            b'X-Amz-Target: DynamoDB_20120810.ListTables\r\nContent-Length: 100\r\n\r\n{"Lim'
        )
        for _ in range(3):  # the request is under way once its headers are read: a pause each
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(cut_off)
                time.sleep(0.2)
        time.sleep(0.3)
        assert server.exit_code() is None, "dynalite exited"
        db = boto3.client(
            "dynamodb",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        assert db.list_tables()["TableNames"] == []
    finally:
        server.stop()


def test_the_sqs_emulator_killed_stops_the_runner_with_a_message(local_system: Callable[..., LocalSystem]) -> None:
    system = local_system(PQH_TASK_SECONDS="0.05")
    system.wait_all([system.submit("alice", "x")["task_id"]], timeout=60)
    children = system.children()

    os.kill(_emulator_process(system, "local.moto_server"), signal.SIGKILL)
    # The runner stops by itself: its queues are gone, so accepting tasks would lose them.
    _wait_for("the runner to stop", lambda: system.process.poll() is not None, system)
    assert system.process.returncode == 1
    log = system.log_path.read_text()
    assert "moto server (SQS) killed by SIGKILL" in log
    assert "Start `make run` again" in log
    # The other children exit with the runner.
    _wait_for("its children to exit", lambda: not any(is_running(pid) for pid in children), system)
