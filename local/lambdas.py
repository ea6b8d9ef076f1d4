"""What Lambda and EventBridge do on AWS, done in-process for the local runner.

Both call the very handlers Chalice deploys (``app.worker``, ``app.dispatcher``),
so the local system runs the same code path as AWS:

* ``start_worker`` is the asynchronous Invoke of the worker Lambda: a thread pool.
* ``trigger_dispatch`` is the asynchronous Invoke of the dispatcher Lambda: it wakes
  one dispatcher thread. Triggers that arrive while it runs coalesce into one more
  pass, as the DynamoDB lock's rerun flag does on AWS.
* Every ``tick_seconds`` the thread runs a full walk, as the schedule does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import ModuleType

from chalice.local import LambdaContext

from chalicelib import wiring
from chalicelib.domain import Handoff
from local.emulator import ROOT, die_with_parent
from local.supervision import Backoff, exit_reason, log_readably

log = logging.getLogger("pqh.local")
# Logged once a restarted Lambda process runs its handlers.
RUNNING_AGAIN = "the local Lambda process is running again"


class LocalLambdas:
    def __init__(self, app_module: ModuleType, capacity: int, tick_seconds: float = 60.0) -> None:
        self._app = app_module
        self._tick = tick_seconds
        # More threads than slots: a duplicate delivery exits at once, and a
        # finished worker's thread is free before its slot is reused. Daemon
        # threads, so Ctrl-C never waits for a running task.
        self._jobs: queue.SimpleQueue[dict[str, object] | None] = queue.SimpleQueue()
        self._workers = [
            threading.Thread(target=self._worker_loop, name=f"worker-{i}", daemon=True) for i in range(capacity + 4)
        ]
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._dispatch_loop, name="dispatcher", daemon=True)

    # --- the Invoker port ---------------------------------------------------

    def start_worker(self, handoff: Handoff) -> None:
        if self._stopped.is_set():
            raise RuntimeError("the local runner is stopping")
        self._jobs.put(handoff.to_payload())

    def trigger_dispatch(self) -> None:
        self._wake.set()

    # --- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        for thread in self._workers:
            thread.start()
        self._thread.start()
        self.trigger_dispatch()  # pick up whatever an earlier run left queued

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self._thread.join(timeout=10)
        # Running tasks are abandoned, not awaited: on a persistent emulator their
        # leases run out and SQS delivers them again, as after a Lambda crash.
        for _ in self._workers:
            self._jobs.put(None)

    # --- the two "functions" ------------------------------------------------

    def _worker_loop(self) -> None:
        while True:
            payload = self._jobs.get()
            if payload is None or self._stopped.is_set():
                return
            try:
                self._app.worker(payload, LambdaContext("worker", 256))
            except Exception:
                if not self._stopped.is_set():
                    log.exception("worker on slot %s failed", payload.get("slot_id"))

    def _dispatch_loop(self) -> None:
        next_tick = time.monotonic() + self._tick
        while not self._stopped.is_set():
            woken = self._wake.wait(timeout=max(0.0, next_tick - time.monotonic()))
            if self._stopped.is_set():
                break
            self._wake.clear()
            full_walk = not woken or time.monotonic() >= next_tick
            if full_walk:
                next_tick = time.monotonic() + self._tick
            try:
                self._app.dispatcher({"full_walk": full_walk}, LambdaContext("dispatcher", 256))
            except Exception:
                if not self._stopped.is_set():
                    log.exception("dispatcher failed; the next trigger or tick retries")


class LambdaProcessError(Exception):
    """The Lambda process could not start; the message says how it ended."""


class RemoteLambdas:
    """The Invoker of the API process: invocations go to the Lambda process (``python -m local.lambdas``).

    On AWS the API, the dispatcher and the workers are separate Lambda functions;
    here they are two processes, so the API's requests and the workers' loops do
    not share one interpreter lock. Each invocation is a line of JSON on the
    child's stdin; the child's output goes to the runner's.

    The Lambda process is supervised: when it dies it is started again (at once,
    then with a growing pause while it keeps dying). What it held comes back as
    after a Lambda crash on AWS: its slots when their leases run out, its
    received messages after the queues' visibility timeout, its started tasks
    once their run leases have run out, all found by the schedule's walk. An
    invocation sent while it is down is taken as AWS takes an asynchronous
    invoke it cannot run yet: accepted, and one dispatch follows once it is back
    (the tasks wait in SQS and DynamoDB meanwhile).
    """

    def __init__(self, capacity: int, tick_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = capacity
        self._tick = tick_seconds
        self._clock = clock
        self._lock = threading.Lock()  # guards the pipe and the swap to a restarted process
        self._stopping = threading.Event()
        self._backoff = Backoff()
        # An invocation found the process down: a dispatch is owed once it is back.
        self._undelivered = False
        self._process = self._spawn()
        self._started_at = clock()
        self._supervisor = threading.Thread(target=self._supervise, name="lambda-supervisor", daemon=True)
        self._supervisor.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Start the Lambda process and wait until its handlers run."""
        ready_read, ready_write = os.pipe()
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "local.lambdas"),
                *("--capacity", str(self._capacity), "--tick", str(self._tick), "--ready-fd", str(ready_write)),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            pass_fds=(ready_write,),
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
        os.close(ready_write)
        # Until the handlers are imported and running, triggers would only queue up:
        # the runner says it is up once this process is.
        with os.fdopen(ready_read, "rb") as ready:
            if ready.read(1) != b"1":
                process.wait()
                raise LambdaProcessError(f"the local Lambda process {exit_reason(process.returncode)} while starting")
        return process

    def _supervise(self) -> None:
        """Wait for the Lambda process to die, and start it again."""
        while True:
            dead = self._process
            dead.wait()
            if self._stopping.is_set():
                return
            log.error(
                "the local Lambda process (pid %d) %s. The tasks it was running run again once their run leases "
                "and their messages' visibility timeout run out; its slots free when their leases do",
                dead.pid,
                exit_reason(dead.returncode),
            )
            process = self._restart(uptime=self._clock() - self._started_at)
            if process is None:
                return
            with self._lock:
                self._process = process
                self._started_at = self._clock()
                owed, self._undelivered = self._undelivered, False
            if self._stopping.is_set():
                self._close(process)
                return
            log.info("%s (pid %d)", RUNNING_AGAIN, process.pid)
            if owed:
                self.trigger_dispatch()

    def _restart(self, uptime: float) -> subprocess.Popen[bytes] | None:
        """Start the process again, pausing longer while it keeps dying; None if the runner stops first."""
        while True:
            pause = self._backoff.pause(uptime)
            log.info("starting the local Lambda process again%s", f" in {pause:.0f}s (it keeps dying)" if pause else "")
            if self._stopping.wait(pause):
                return None
            try:
                return self._spawn()
            except LambdaProcessError as exc:
                log.error("%s", exc)
                uptime = 0.0

    def _send(self, message: dict[str, object]) -> None:
        with self._lock:
            process = self._process
            if process.poll() is None and process.stdin is not None:
                try:
                    process.stdin.write((json.dumps(message) + "\n").encode())
                    process.stdin.flush()
                    return
                except OSError:  # it died since the poll: the supervisor restarts it
                    pass
            if not self._undelivered and not self._stopping.is_set():
                log.warning("the local Lambda process is down: submits are queued and run once it is back")
            self._undelivered = True

    def start_worker(self, handoff: Handoff) -> None:
        # Not delivered while the process is down: the slot frees when its lease runs out.
        self._send({"function": "worker", "payload": handoff.to_payload()})

    def trigger_dispatch(self) -> None:
        self._send({"function": "dispatcher"})

    def stop(self, timeout: float = 15.0) -> None:
        """Close the pipe: the Lambda process stops its dispatcher and workers and exits."""
        self._stopping.set()
        with self._lock:
            process = self._process
        self._close(process, timeout)
        self._supervisor.join(timeout=timeout)

    @staticmethod
    def _close(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve(capacity: int, tick_seconds: float, ready_fd: int | None = None) -> int:
    """The Lambda process: the handlers on LocalLambdas, invoked by lines on stdin, until stdin closes."""
    log_readably()  # as the runner's own (it sets POWERTOOLS_METRICS_DISABLED)
    import app as app_module

    lambdas = LocalLambdas(app_module, capacity=capacity, tick_seconds=tick_seconds)
    wiring.configure(invoker_factory=lambda _settings: lambdas)
    lambdas.start()
    if ready_fd is not None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)
    try:
        for line in sys.stdin:
            message = json.loads(line)
            if message.get("function") == "worker":
                lambdas.start_worker(Handoff.from_payload(message["payload"]))
            else:
                lambdas.trigger_dispatch()
    finally:
        lambdas.stop()
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner stops this process by closing its stdin
    parser = argparse.ArgumentParser(description="the local runner's Lambda process")
    parser.add_argument("--capacity", type=int, required=True)
    parser.add_argument("--tick", type=float, required=True)
    parser.add_argument("--ready-fd", type=int, help="written to once the handlers run")
    arguments = parser.parse_args()
    sys.exit(serve(arguments.capacity, arguments.tick, arguments.ready_fd))
