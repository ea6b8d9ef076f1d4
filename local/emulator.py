"""The embedded AWS emulators on loopback, each a child process.

DynamoDB is dynalite (a Node.js implementation of DynamoDB's API, in memory or
on disk; `make` installs it from npm into local/node/), or moto's server with
PQH_DYNAMODB_EMULATOR=moto. SQS is moto's server with speed fixes for deep
queues (local/moto_server.py, with local/moto_patches.py).

Child processes, not threads, so the emulators and the service use both cores.
Each dies with its parent, even if the parent is killed outright (Linux).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DYNALITE = ROOT / "local" / "node" / "node_modules" / "dynalite" / "cli.js"
# dynalite's command line, run so that a client going away mid-request cannot end it (see the file).
DYNALITE_LAUNCHER = ROOT / "local" / "node" / "dynalite.js"


def die_with_parent() -> None:  # runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class EmulatorError(Exception):
    """The emulator could not start; the message says why and what to do."""


class EmulatorProcess:
    """An emulator process on a loopback port: launch, wait until it answers, stop."""

    name = "emulator"
    stop_seconds = 5.0  # after SIGTERM, then SIGKILL

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}"
        self.serves = "AWS"  # which services the runner points at it: DynamoDB, SQS, or both
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def keeps_state(self) -> bool:
        """Whether a restarted process has the tables or queues the dead one had."""
        return False

    def exit_code(self) -> int | None:
        """None while the process runs (or was never launched); its exit code once it has died."""
        return None if self._process is None else self._process.poll()

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self._process is not None, "launch() first"
        return self._process.pid

    def probe(self) -> None:
        """Raise OSError until the server answers."""
        with socket.create_connection((self.host, self.port), timeout=1):
            pass

    def start(self, timeout: float = 60.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process; wait_ready() waits until it answers (start several, then wait)."""
        with socket.socket() as probe:
            if probe.connect_ex((self.host, self.port)) == 0:
                raise EmulatorError(
                    f"port {self.port} is taken; set PQH_EMULATOR_PORT to a free port, "
                    f"or AWS_ENDPOINT_URL={self.url} to use the emulator already there"
                )
        self._process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=self.environment(),
            stdout=self.output(),
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )

    def environment(self) -> dict[str, str] | None:
        """The process's environment (None: this one's)."""
        return None

    def output(self) -> Any:
        """Where the process's output goes (a file for emulators worth reading after a failure)."""
        return subprocess.DEVNULL

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self._process is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmulatorError(f"{self.name} exited with code {self._process.returncode}")
            try:
                self.probe()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise EmulatorError(f"{self.name} did not answer on {self.url} within {timeout:.0f}s")

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=self.stop_seconds)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class MotoServer(EmulatorProcess):
    """moto's server with pqh's patches (local/moto_server.py): DynamoDB, SQS, or both."""

    name = "moto server"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "local.moto_server", "-H", self.host, "-p", str(self.port)]

    def probe(self) -> None:
        with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
            pass


class DynaliteServer(EmulatorProcess):
    """dynalite: DynamoDB's API in Node.js; tables are ACTIVE as soon as created.

    In memory, or with ``path`` in a LevelDB directory there, which a restarted
    process reads again: the local runner keeps its tables on disk for the run,
    so a dynalite that dies is started again with nothing lost.

    A conditional UpdateItem costs it about 1.3 ms of CPU where moto's server
    spends about 4.4 ms (bench/emulator_calls.py); it applies each write to an
    item atomically (a lock per key) and validates requests as DynamoDB does.
    It has no TTL (pqh never relies on TTL deletion) and no transactions (pqh
    uses none).
    """

    name = "dynalite"

    def __init__(self, host: str, port: int, path: Path | None = None) -> None:
        super().__init__(host, port)
        self.path = path

    @property
    def keeps_state(self) -> bool:
        return self.path is not None

    def command(self) -> list[str]:
        node = shutil.which("node")
        if node is None or not DYNALITE.exists():
            raise EmulatorError(
                "dynalite is not installed: run `make venv` (it needs Node.js 20+ and npm), "
                "or set PQH_DYNAMODB_EMULATOR=moto to use moto's server for DynamoDB"
            )
        return [
            node,
            str(DYNALITE_LAUNCHER),
            "--host",
            self.host,
            "--port",
            str(self.port),
            *("--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0"),
            *(("--path", str(self.path)) if self.path is not None else ()),
        ]


def dynalite_missing(which: Callable[[str], str | None] = shutil.which, dynalite: Path = DYNALITE) -> str | None:
    """Why dynalite cannot start here (no Node.js, or not installed), or None when it can."""
    if which("node") is None:
        return "Node.js is not on PATH"
    if not dynalite.exists():
        return "dynalite is not installed in local/node/ (`make venv` installs it with npm)"
    return None


def dynamodb_emulator_kind(requested: str | None = None, missing: str | None = None) -> tuple[str, str | None]:
    """Which DynamoDB emulator to start, and a one-line notice when it is not the default one.

    PQH_DYNAMODB_EMULATOR names it; unset means dynalite, or moto's server on a
    machine without Node.js or dynalite, so `make run` works there too.
    """
    raw = (requested if requested is not None else os.environ.get("PQH_DYNAMODB_EMULATOR", "")).strip()
    if raw in ("dynalite", "moto"):
        return raw, None
    if raw:
        raise EmulatorError(f"PQH_DYNAMODB_EMULATOR={raw!r}: use dynalite or moto")
    if missing is None:
        return "dynalite", None
    return "moto", f"{missing}: DynamoDB runs on moto's server instead of dynalite (slower, kept in memory only)"


def dynamodb_emulator(host: str, port: int, kind: str | None = None, path: Path | None = None) -> EmulatorProcess:
    """The DynamoDB emulator named by PQH_DYNAMODB_EMULATOR: dynalite (the default; on disk at ``path``) or moto."""
    kind = kind if kind is not None else dynamodb_emulator_kind(missing=dynalite_missing())[0]
    if kind == "dynalite":
        return DynaliteServer(host, port, path)
    if kind == "moto":
        return MotoServer(host, port)
    raise EmulatorError(f"PQH_DYNAMODB_EMULATOR={kind!r}: use dynalite or moto")
