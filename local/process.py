"""Start the local runner as a real process on free loopback ports and drive it over HTTP.

Used by the end-to-end tests and the benchmarks alike.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class LocalSystem:
    process: subprocess.Popen[str]
    base_url: str
    emulator_port: int
    log_path: Path
    sqs_emulator_port: int = 0
    http: requests.Session = field(default_factory=requests.Session)

    def submit(self, user_id: str, x: Any = "foo") -> dict[str, Any]:
        response = self.http.post(f"{self.base_url}/task", json={"x": x, "user_id": user_id}, timeout=30)
        if response.status_code != 202:
            raise RuntimeError(f"submit answered {response.status_code}: {response.text}; log: {self.log_tail()}")
        return response.json()  # type: ignore[no-any-return]

    def result(self, task_id: str) -> dict[str, Any]:
        response = self.http.get(f"{self.base_url}/result/{task_id}", timeout=30)
        if response.status_code != 200:
            raise RuntimeError(f"result answered {response.status_code}: {response.text}; log: {self.log_tail()}")
        return response.json()  # type: ignore[no-any-return]

    def wait_all(self, task_ids: list[str], timeout: float = 120.0) -> list[dict[str, Any]]:
        """Wait until every task has finished; return their results in order.

        Checks one unfinished task at a time and sleeps while it is unfinished, so
        waiting adds a few requests a second, not one per task per round.
        """
        deadline = time.monotonic() + timeout
        done: dict[str, dict[str, Any]] = {}
        for task_id in task_ids:
            while True:
                body = self.result(task_id)
                if body["task_status"] in ("SUCCESS", "FAILURE"):
                    done[task_id] = body
                    break
                if time.monotonic() > deadline:
                    unfinished = len(task_ids) - len(done)
                    raise TimeoutError(f"{unfinished} tasks not finished; log: {self.log_tail()}")
                time.sleep(0.1)
        return [done[t] for t in task_ids]

    def children(self) -> dict[int, str]:
        """The runner's live child processes and their command lines (Linux /proc; a reaped or zombie one has none)."""
        found: dict[int, str] = {}
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.process.pid}/task").iterdir():
                for child in (task / "children").read_text().split():
                    with contextlib.suppress(OSError):
                        command = Path(f"/proc/{child}/cmdline").read_text().replace("\0", " ")
                        if command:
                            found[int(child)] = command
        return found

    def log_tail(self, chars: int = 4000) -> str:
        """The runner's log, its end: what a failing test shows (the access log's polling lines left out)."""
        lines = [line for line in self.log_path.read_text().splitlines() if '"GET /result/' not in line]
        return "\n" + "\n".join(lines)[-chars:]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return -9
        return self.process.returncode


def is_running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped (Linux /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def start_local_system(tmp_path: Path, **env: str) -> LocalSystem:
    port, emulator_port, sqs_emulator_port = free_port(), free_port(), free_port()
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL") and not k.startswith("PQH_")}
    run_env.update(
        PQH_PORT=str(port),
        PQH_EMULATOR_PORT=str(emulator_port),
        PQH_SQS_EMULATOR_PORT=str(sqs_emulator_port),
        PQH_LOCAL_PREFIX=f"pqh-e2e-{uuid.uuid4().hex[:8]}",
        PQH_TICK_SECONDS="60",
        PYTHONUNBUFFERED="1",
    )
    if os.environ.get("PQH_DYNAMODB_EMULATOR"):  # benchmarks compare the two emulators
        run_env["PQH_DYNAMODB_EMULATOR"] = os.environ["PQH_DYNAMODB_EMULATOR"]
    run_env.update(env)
    log_path = tmp_path / "local-run.log"
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "local.run"],
        cwd=ROOT,
        env=run_env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
    )
    system = LocalSystem(process, f"http://127.0.0.1:{port}", emulator_port, log_path, sqs_emulator_port)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"local runner exited early: {log_path.read_text()[-3000:]}")
        try:
            # The dashboard page is served in every auth mode, once the resources exist.
            probe = system.http.get(f"{system.base_url}/dashboard", timeout=2)
            if probe.status_code == 200:
                return system
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    system.stop()
    raise RuntimeError(f"local runner did not come up: {log_path.read_text()[-3000:]}")
