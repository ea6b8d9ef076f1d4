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

import logging
import queue
import threading
import time
from types import ModuleType

from chalice.local import LambdaContext

from chalicelib.domain import Handoff

log = logging.getLogger("pqh.local")


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
