"""More API processes for `make run`: the same handlers, on the socket the runner listens on.

On AWS, API Gateway spreads requests over as many API Lambda instances as it
needs. Locally one Python process would serve the whole API, and its interpreter
lock bounds it near one core (a submit costs it about 5 ms of CPU). With
PQH_API_PROCESSES = N > 1 the runner starts N - 1 of these processes. Each
accepts connections on the runner's listening socket (inherited, so the kernel
hands each connection to whichever process accepts first) and sends the
dispatcher nudges of its submits to the runner over a pipe, one line each; the
runner passes them to its Lambda stand-in as it does its own.

    python -m local.api --listen-fd FD --nudge-fd FD   (started by local/run.py)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chalice.config import Config  # noqa: E402
from chalice.local import LocalDevServer, ThreadedHTTPServer  # noqa: E402

from chalicelib.domain import Handoff  # noqa: E402
from local.emulator import die_with_parent  # noqa: E402
from local.gateway import GatewayHandler  # noqa: E402
from local.supervision import Backoff, exit_reason, log_readably  # noqa: E402

log = logging.getLogger("pqh.local")


class BacklogServer(ThreadedHTTPServer):
    """Chalice's threaded server with a listen backlog of 128, not socketserver's 5.

    With 5, eight or more clients connecting at once see SYNs dropped and
    1-second retransmit stalls.
    """

    request_queue_size = 128
    daemon_threads = True


class InheritedSocketServer(BacklogServer):
    """The same server on a listening socket this process inherited (``listen_fd``)."""

    listen_fd = -1

    def __init__(self, address: Any, handler: Any) -> None:
        super().__init__(address, handler, bind_and_activate=False)
        inherited = socket.socket(fileno=self.listen_fd)
        getattr(self, "socket").close()  # noqa: B009 (the one it made, never bound)
        setattr(self, "socket", inherited)  # noqa: B010
        host, port = inherited.getsockname()[:2]
        self.server_address = (host, port)
        self.server_name, self.server_port = str(host), int(port)


class NudgePipe:
    """The invoker of an extra API process: a dispatcher nudge is a line to the runner."""

    def __init__(self, fd: int) -> None:
        self._pipe = os.fdopen(fd, "wb", buffering=0)
        self._lock = threading.Lock()

    def trigger_dispatch(self) -> None:
        with self._lock:  # the runner gone raises OSError: Deps.nudge_dispatcher logs it
            self._pipe.write(b"d\n")

    def start_worker(self, handoff: Handoff) -> None:
        raise RuntimeError("the API starts no workers: the dispatcher does")


class ApiProcesses:
    """The runner's extra API processes: started, started again when one dies, stopped with it."""

    def __init__(self, count: int, listen_fd: int, on_nudge: Callable[[], None]) -> None:
        self._listen_fd = listen_fd
        self._on_nudge = on_nudge
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        nudges, self._nudge_fd = os.pipe()
        threading.Thread(target=self._relay, args=(nudges,), name="api-nudges", daemon=True).start()
        self._processes: list[subprocess.Popen[bytes]] = []
        for _ in range(count):
            process = self._spawn()
            self._processes.append(process)
            threading.Thread(target=self._supervise, args=(process,), name="api-supervisor", daemon=True).start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "local.api"),
                *("--listen-fd", str(self._listen_fd), "--nudge-fd", str(self._nudge_fd)),
            ],
            cwd=ROOT,
            pass_fds=(self._listen_fd, self._nudge_fd),
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )

    def _relay(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as nudges:
            for _ in nudges:
                try:
                    self._on_nudge()
                except Exception:
                    log.exception("could not pass on a dispatcher nudge; the next tick will dispatch")

    def _supervise(self, process: subprocess.Popen[bytes]) -> None:
        backoff = Backoff()
        started = time.monotonic()
        while True:
            process.wait()
            if self._stopping.is_set():
                return
            pause = backoff.pause(time.monotonic() - started)
            log.error(
                "an API process (pid %d) %s; starting it again%s",
                process.pid,
                exit_reason(process.returncode),
                f" in {pause:.0f}s (it keeps dying)" if pause else "",
            )
            if self._stopping.wait(pause):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                replacement = self._spawn()
                self._processes[self._processes.index(process)] = replacement
            process, started = replacement, time.monotonic()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def api_server(app_module: Any, max_body_bytes: int, host: str, port: int, server_cls: Any) -> LocalDevServer:
    """Chalice's local server for the app, with API Gateway's limits (local/gateway.py)."""
    GatewayHandler.max_body_bytes = max_body_bytes
    config = Config.create(chalice_stage="local", app_name="pqh", project_dir=str(ROOT))
    return LocalDevServer(app_module.app, config, host, port, handler_cls=GatewayHandler, server_cls=server_cls)


def serve(listen_fd: int, nudge_fd: int) -> int:
    """An extra API process: the runner's environment, its socket, nudges through the pipe."""
    # Ctrl-C reaches the whole process group: the runner stops this process itself
    # (SIGTERM), once it no longer starts it again.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from chalicelib import settings as settings_mod
    from chalicelib import wiring

    log_readably()
    import app as app_module

    nudger = NudgePipe(nudge_fd)
    wiring.configure(invoker_factory=lambda _settings: nudger)
    InheritedSocketServer.listen_fd = listen_fd
    server = api_server(app_module, settings_mod.load().max_body_bytes, "", 0, InheritedSocketServer)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    server.server.serve_forever()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--nudge-fd", type=int, required=True)
    args = parser.parse_args(argv)
    return serve(args.listen_fd, args.nudge_fd)


if __name__ == "__main__":
    sys.exit(main())
