"""The embedded AWS emulator: moto's server on loopback, as a child process.

It is moto with two speed fixes for deep SQS queues (local/fast_moto.py).

A child process, not a thread, so the emulator and the service use both cores.
It dies with its parent, even if the parent is killed outright (Linux).
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class EmulatorError(Exception):
    """The emulator could not start; the message says why and what to do."""


class MotoServer:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}"
        self._process: subprocess.Popen[bytes] | None = None

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
            [sys.executable, "-m", "local.fast_moto", "-H", self.host, "-p", str(self.port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self._process is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmulatorError(f"moto server exited with code {self._process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise EmulatorError(f"moto server did not answer on {self.url} within {timeout:.0f}s")

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
