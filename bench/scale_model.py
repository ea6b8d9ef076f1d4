"""The scale model's pieces: clocks, a token bucket, a latency sampler, AWS-like ports.

The ports wrap the in-memory adapters and add what limits pqh on AWS:
- every call takes a latency drawn from a lognormal distribution, half before
  the call lands and half after (so a conditional write races for a whole round
  trip, as on AWS);
- DynamoDB items have a write budget (1,000 WCU/s) and a read budget (3,000
  RCU/s): a call beyond it is throttled, retried as botocore's standard mode
  retries (four attempts, random backoff of up to 1, 2, 4 s), and raises
  ProvisionedThroughputExceededException after the last, as the DynamoDB
  adapters surface it (they do not catch it);
- an SQS short poll returns only some of the messages it could;
- Lambda has an account concurrency limit shared by every function.

The same code runs under a virtual clock (a discrete-event simulation: each
simulated thread blocks in ``sleep`` and time jumps to the next wake-up once
every one of them is blocked) or under the real clock (actual sleeps): the
model and the experiment that checks it differ only in the clock.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from botocore.exceptions import ClientError

from bench.scale_shim import LEVELS, shard_of


class SimulationOver(BaseException):
    """Raised in every simulated thread when the run ends (not an Exception: nothing catches it)."""


# --- clocks ---------------------------------------------------------------------


class VirtualTimer:
    """A one-shot timer on the virtual clock (the services' Timer protocol)."""

    def __init__(self) -> None:
        self.cancelled = False
        self.done = threading.Event()

    def cancel(self) -> None:
        self.cancelled = True

    def join(self, timeout: float | None = None) -> None:
        # Only a timer that has started firing needs waiting for; a cancelled or
        # pending one returns at once (its heap entry is dropped when it comes up).
        if getattr(self, "firing", False):
            self.done.wait()


class VirtualClock:
    """Virtual time for threads: time jumps to the earliest wake-up once every simulated thread sleeps.

    A simulated thread is one started by ``spawn``; each blocks only in ``sleep``
    (or ends). The code it runs may take locks, but must never sleep holding one.
    """

    def __init__(self, until: float = math.inf) -> None:
        self._now = 0.0
        self._until = until
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()
        self._running = 0
        self.stopped = False
        self.timed_out = False  # stopped by run's real-time bound, before ``until``
        self.finished = threading.Event()
        self.events = 0

    def now(self) -> float:
        return self._now

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            self._spawn_locked(fn, *args)

    def _spawn_locked(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.stopped:
            return
        self._running += 1

        def body() -> None:
            try:
                fn(*args)
            except SimulationOver:
                pass
            finally:
                self._leave()

        threading.Thread(target=body, daemon=True).start()

    def _leave(self) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0:
                self._advance_locked()

    def sleep(self, seconds: float) -> None:
        wake = threading.Event()
        with self._lock:
            if self.stopped:
                raise SimulationOver
            heapq.heappush(self._heap, (self._now + max(0.0, seconds), next(self._seq), wake))
            self._running -= 1
            if self._running == 0:
                self._advance_locked()
        wake.wait()
        if self.stopped:
            raise SimulationOver

    def start_timer(self, delay: float, fire: Callable[[], None]) -> VirtualTimer:
        timer = VirtualTimer()
        with self._lock:
            heapq.heappush(self._heap, (self._now + max(0.0, delay), next(self._seq), (timer, fire)))
        return timer

    def _advance_locked(self) -> None:
        while True:
            if not self._heap:
                self.stopped = True
                self.finished.set()
                return
            wake_at = self._heap[0][0]
            if wake_at > self._until:
                self._stop_locked()
                return
            self._now = wake_at
            woke = 0
            while self._heap and self._heap[0][0] == wake_at:
                _, _, entry = heapq.heappop(self._heap)
                self.events += 1
                if isinstance(entry, threading.Event):
                    self._running += 1
                    entry.set()
                    woke += 1
                else:
                    timer, fire = entry
                    if not timer.cancelled:
                        timer.firing = True
                        self._spawn_locked(_fire_then_done, timer, fire)
                        woke += 1
            if woke:
                return

    def _stop_locked(self) -> None:
        self.stopped = True
        for _, _, entry in self._heap:
            if isinstance(entry, threading.Event):
                entry.set()
        self._heap.clear()
        self.finished.set()

    def run(self, real_timeout: float = 600.0) -> None:
        """Wait until the virtual time passes ``until`` (or nothing is left to do).

        After ``real_timeout`` seconds of real time it stops where it is and says so
        (``timed_out``): the run's report is then of a shorter run than asked for.
        """
        with self._lock:
            if self._running == 0:
                self._advance_locked()
        if not self.finished.wait(real_timeout):
            with self._lock:
                self.timed_out = True
                self._stop_locked()


class ClockFuture(Future[Any]):
    """A Future whose ``result`` waits as the virtual clock's ``sleep`` does: the clock counts the waiter as blocked."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock
        self._waiting = False

    def result(self, timeout: float | None = None) -> Any:
        clock = self._clock
        with clock._lock:
            if not self.done():
                self._waiting = True
                clock._running -= 1
                if clock._running == 0:
                    clock._advance_locked()
        return super().result()

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        """Called by the job's own simulated thread: the waiter runs again before the job's thread leaves."""
        with self._clock._lock:
            if self._waiting:
                self._clock._running += 1
                self._waiting = False
            if error is None:
                self.set_result(value)
            else:
                self.set_exception(error)


class ClockExecutor(Executor):
    """A thread pool for the services' side calls: each job on a thread of the clock (simulated or real).

    ``inline()`` true (while the backlog is filled before a run, outside any simulated
    thread) runs the job at once on the caller's thread.
    """

    def __init__(self, clock: Clock, inline: Callable[[], bool]) -> None:
        self._clock = clock
        self._inline = inline

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        clock = self._clock
        if self._inline() or not isinstance(clock, VirtualClock):
            future: Future[Any] = Future()
            if self._inline():
                _run_into(future, fn, args, kwargs)
            else:
                threading.Thread(target=_run_into, args=(future, fn, args, kwargs), daemon=True).start()
            return future
        waited = ClockFuture(clock)

        def job() -> None:
            try:
                value = fn(*args, **kwargs)
            except BaseException as exc:  # the waiter sees it on .result(), as with a pool
                waited.settle(error=exc)
                return
            waited.settle(value)

        with clock._lock:
            if clock.stopped:
                waited.set_exception(SimulationOver())
                return waited
            clock._spawn_locked(job)
        return waited

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


def _run_into(future: Future[Any], fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
    try:
        future.set_result(fn(*args, **kwargs))
    except BaseException as exc:
        future.set_exception(exc)


def _fire_then_done(timer: VirtualTimer, fire: Callable[[], None]) -> None:
    try:
        fire()
    finally:
        timer.done.set()


class RealClock:
    """The same interface on the wall clock: actual sleeps and threads (the experiment)."""

    def __init__(self, until: float = math.inf) -> None:
        self._start = time.monotonic()
        self._until = until
        self.stopped = False
        self.events = 0
        self._threads: list[threading.Thread] = []

    def now(self) -> float:
        return time.monotonic() - self._start

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.stopped:
            return

        def body() -> None:
            with contextlib.suppress(SimulationOver):
                fn(*args)

        thread = threading.Thread(target=body, daemon=True)
        self._threads.append(thread)
        thread.start()

    def sleep(self, seconds: float) -> None:
        if self.stopped:
            raise SimulationOver
        time.sleep(max(0.0, seconds))
        if self.stopped:
            raise SimulationOver

    def start_timer(self, delay: float, fire: Callable[[], None]) -> threading.Timer:
        timer = threading.Timer(delay, fire)
        timer.daemon = True
        timer.start()
        return timer

    def run(self, real_timeout: float = 600.0) -> None:
        time.sleep(max(0.0, min(self._until, real_timeout) - self.now()))
        self.stopped = True
        for thread in self._threads:
            thread.join(timeout=2.0)


Clock = VirtualClock | RealClock


# --- budgets and latencies ------------------------------------------------------


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` banked; a request takes its cost or is refused."""

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now
        self._lock = threading.Lock()

    def take(self, cost: float, now: float) -> bool:
        with self._lock:
            if now > self.last:
                self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
                self.last = now
            if self.tokens >= cost:
                self.tokens -= cost
                return True
            return False


@dataclass(frozen=True)
class Latency:
    """A lognormal latency: ``median`` seconds, log-space spread ``sigma``."""

    median: float
    sigma: float

    def quantile(self, q: float) -> float:
        return self.median * math.exp(self.sigma * NormalDist().inv_cdf(q))

    def mean(self) -> float:
        return self.median * math.exp(self.sigma**2 / 2)

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(math.log(self.median), self.sigma)


# One call's round trip from a Lambda function in the same Region. Assumptions,
# not measurements of this project (nothing here has run on AWS): AWS documents
# DynamoDB's GetItem/PutItem as single-digit milliseconds on average (the
# Knowledge Center's "troubleshoot high latency" article; "Understanding Amazon
# DynamoDB latency" on the AWS Database Blog), with occasional spikes; SQS and
# Lambda's Invoke API are usually reported at around 10-20 ms from inside a Region.
LATENCIES = {
    "dynamodb": Latency(median=0.004, sigma=0.45),  # p50 4 ms, p99 11 ms
    "sqs": Latency(median=0.008, sigma=0.5),  # p50 8 ms, p99 26 ms
    "lambda": Latency(median=0.015, sigma=0.5),  # the Invoke (Event) API call: p50 15 ms
    "async_start": Latency(median=0.040, sigma=0.6),  # an async event reaching a warm function
}


def backoff(attempt: int, rng: random.Random) -> float:
    """botocore's standard retry mode: a random pause of up to 2**(attempt - 1) seconds (20 s at most)."""
    return rng.random() * min(20.0, 2.0 ** (attempt - 1))


# --- AWS's limits ----------------------------------------------------------------

# Per partition, so at best per item (adaptive capacity isolates a hot item on a
# partition of its own, and one item never spans partitions): DynamoDB developer
# guide, "warm throughput" scenarios and "partitions".
ITEM_WCU_PER_SECOND = 1000.0
ITEM_RCU_PER_SECOND = 3000.0
# An on-demand table's own quota (40,000 read and 40,000 write request units a second,
# raised on request): what binds the task records, which spread over partitions.
TABLE_UNITS_PER_SECOND = 40_000.0
TABLE_BUDGETS = ("tasks",)
# Lambda: concurrent executions per account and Region (Service Quotas default).
LAMBDA_CONCURRENCY = 1000
# API Gateway: account throttle per Region, with a 5,000-request token bucket.
APIGW_RPS = 10000.0
APIGW_BURST = 5000.0
BOTOCORE_ATTEMPTS = 4  # chalicelib/aws.py: standard mode, max_attempts=4
# Async invocations Lambda could not run for lack of concurrency are retried from
# its internal queue (with backoff, for up to six hours); the model retries after this.
ASYNC_THROTTLE_RETRY = 1.0


def number_bytes(value: float | int) -> int:
    """DynamoDB's size of a number: about one byte per two significant digits, plus one."""
    text = repr(float(value)) if isinstance(value, float) else str(int(value))
    digits = text.lstrip("-").replace(".", "").lstrip("0").split("e")[0].rstrip("0") or "0"
    return len(digits) // 2 + 1 + (len(digits) % 2)


def backlog_item_bytes(state: Any) -> int:
    """The size of the control table's ``backlog`` item for a Backlog state (names as the adapter writes them)."""
    size = len("pk") + len("backlog")
    groups = {
        "l": state.counts,
        "e": state.enqueued,
        "d": state.dequeued,
        "w": state.withdrawn,
        "p": state.passes,
        "s": state.stamps,
        "a": state.arrival_rates,
        "r": state.rated_enqueued,
    }
    for prefix, values in groups.items():
        for level, value in enumerate(values):
            if value:
                size += len(f"{prefix}{level}") + number_bytes(value)
    for name, value in (("vt", state.vtime), ("v", state.version), ("rt", state.run_seconds), ("ra", state.rated_at)):
        if value:
            size += len(name) + number_bytes(value)
    for name, value in zip(("ts", "tf", "tc"), state.tallies, strict=True):
        if value:
            size += len(name) + number_bytes(value)
    return size


def throttled(operation: str) -> ClientError:
    return ClientError(
        {
            "Error": {
                "Code": "ProvisionedThroughputExceededException",
                "Message": "The level of configured provisioned throughput for the table was exceeded.",
            }
        },
        operation,
    )


@dataclass
class Meter:
    """Everything the model counts."""

    requests: Counter[str] = field(default_factory=Counter)  # billed requests by "service:Operation"
    wcu: Counter[str] = field(default_factory=Counter)  # write units by item
    rcu: Counter[str] = field(default_factory=Counter)
    throttles: Counter[str] = field(default_factory=Counter)  # refused attempts by item
    errors: Counter[str] = field(default_factory=Counter)  # calls that failed after every retry
    races_lost = 0
    picks_committed = 0
    lambda_throttles = 0
    task_runs: list[tuple[float, float]] = field(default_factory=list)
    submits: list[tuple[float, float, bool]] = field(default_factory=list)  # (at, seconds, accepted)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Aws:
    """What every wrapped call shares: the clock, latencies, item budgets, the meter."""

    def __init__(
        self,
        clock: Clock,
        seed: int,
        wcu: float,
        rcu: float,
        short_poll_keep: float = 0.9,
        client_seconds: float = 0.0,
    ) -> None:
        self.clock = clock
        # The caller's own time per call (building and parsing the request, the
        # policy around it): simulated under the virtual clock, real under the real one.
        self.client_seconds = client_seconds if isinstance(clock, VirtualClock) else 0.0
        self.rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.meter = Meter()
        self.wcu_rate = wcu
        self.rcu_rate = rcu
        self.short_poll_keep = short_poll_keep
        self.enabled = True  # off while the backlog is filled before a run
        self._buckets: dict[str, TokenBucket] = {}
        self._buckets_lock = threading.Lock()

    def latency(self, kind: str) -> float:
        with self._rng_lock:
            return LATENCIES[kind].sample(self.rng)

    def random(self) -> float:
        with self._rng_lock:
            return self.rng.random()

    def _bucket(self, key: str) -> TokenBucket:
        with self._buckets_lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if key[2:] in TABLE_BUDGETS:
                    rate = TABLE_UNITS_PER_SECOND
                else:
                    rate = self.wcu_rate if key.startswith("w:") else self.rcu_rate
                bucket = self._buckets[key] = TokenBucket(rate, rate, self.clock.now())
            return bucket

    def call(
        self,
        service: str,
        operation: str,
        fn: Callable[[], Any],
        item: str | None = None,
        wcu: int = 0,
        rcu: int = 0,
        requests: int = 1,
        index_writes: Sequence[str] = (),
        reads: Sequence[str] = (),
    ) -> Any:
        """One AWS request: half its latency, then ``fn`` (if the item's budget allows), then the other half.

        ``index_writes`` names the index partitions (one per global secondary index
        key the write adds or removes) it writes a unit to: each has an item's budget
        too, and DynamoDB throttles a table write whose index cannot take it.
        ``reads`` names items a batch read also reads (a read unit of each one's budget).
        """
        if not self.enabled:
            return fn()
        meter = self.meter
        half = self.latency(service) / 2
        self.clock.sleep(self.client_seconds + half)
        for attempt in range(1, BOTOCORE_ATTEMPTS + 1):
            allowed = True
            refused_by = item or operation
            if item is not None:
                now = self.clock.now()
                if wcu:
                    allowed = self._bucket("w:" + item).take(wcu, now)
                if allowed and rcu:
                    allowed = self._bucket("r:" + item).take(rcu, now)
                for index in index_writes:
                    if allowed:
                        allowed = self._bucket("w:" + index).take(1, now)
                        refused_by = refused_by if allowed else index
                for other in reads:
                    if allowed:
                        allowed = self._bucket("r:" + other).take(1, now)
                        refused_by = refused_by if allowed else other
            if allowed:
                with meter.lock:
                    meter.requests[f"{service}:{operation}"] += requests
                    if item is not None:
                        meter.wcu[item] += wcu
                        meter.rcu[item] += rcu
                    for index in index_writes:
                        meter.wcu[index] += 1
                    for other in reads:
                        meter.rcu[other] += 1
                result = fn()
                self.clock.sleep(half)
                return result
            with meter.lock:
                meter.throttles[refused_by] += 1
            self.clock.sleep(half)  # the refusal travels back
            if attempt == BOTOCORE_ATTEMPTS:
                with meter.lock:
                    meter.errors[refused_by] += 1
                raise throttled(operation)
            with self._rng_lock:
                pause = backoff(attempt, self.rng)
            half = self.latency(service) / 2
            self.clock.sleep(pause + half)
        raise AssertionError("unreachable")


class AwsControlStore:
    """The control table: slot items and the one ``backlog`` item every submit and pick writes."""

    def __init__(self, inner: Any, aws: Aws, shard: int = 0) -> None:
        self._inner = inner
        self._aws = aws
        self._shard = shard
        # Each backlog shard's record is an item of its own, with its own budget.
        self._item = "backlog" if shard == 0 else f"backlog#{shard}"
        self._views: dict[int, AwsControlStore] = {shard: self}

    def shard(self, shard: int) -> AwsControlStore:
        if shard not in self._views:
            self._views[shard] = AwsControlStore(self._inner.shard(shard), self._aws, shard)
        return self._views[shard]

    @staticmethod
    def _items(shards: int) -> list[str]:
        return ["backlog"] + [f"backlog#{k}" for k in range(1, shards)]

    def backlogs(self, shards: int) -> Any:
        # One BatchGetItem: a read unit on each shard's item.
        return self._aws.call(
            "dynamodb", "BatchGetItem", lambda: self._inner.backlogs(shards), reads=self._items(shards)
        )

    def backlogs_of(self, shards: Sequence[int]) -> Any:
        items = [self._items(max(shards) + 1)[k] for k in shards]
        return self._aws.call("dynamodb", "BatchGetItem", lambda: self._inner.backlogs_of(shards), reads=items)

    def slots_and_backlogs(self, capacity: int, shards: int) -> Any:
        keys = capacity + shards
        return self._aws.call(
            "dynamodb",
            "BatchGetItem",
            lambda: self._inner.slots_and_backlogs(capacity, shards),
            reads=self._items(shards),
            requests=math.ceil(keys / 100),
        )

    def _call_bool(self, *args: Any, **kwargs: Any) -> bool:
        return bool(self._aws.call(*args, **kwargs))

    def _backlog_wcu(self) -> int:
        return max(1, math.ceil(backlog_item_bytes(self._inner.backlog()) / 1024))

    def slots(self, capacity: int) -> Any:
        return self.slots_and_backlog(capacity)[0]

    def slots_and_backlog(self, capacity: int) -> Any:
        # BatchGetItem, 100 keys a request, consistent: an RCU per item; the backlog item's counted on it.
        keys = capacity + 1
        return self._aws.call(
            "dynamodb",
            "BatchGetItem",
            lambda: self._inner.slots_and_backlog(capacity),
            item=self._item,
            rcu=1,
            requests=math.ceil(keys / 100),
        )

    def claim_slot(self, slot_id: int, holder: str, now: float, lease_until: float) -> bool:
        return self._call_bool(
            "dynamodb",
            "UpdateItem",
            lambda: self._inner.claim_slot(slot_id, holder, now, lease_until),
            item=f"slot#{slot_id}",
            wcu=1,
        )

    def take_over_slot(self, slot_id: int, holder: str, new_holder: str, now: float, lease_until: float) -> bool:
        return self._call_bool(
            "dynamodb",
            "UpdateItem",
            lambda: self._inner.take_over_slot(slot_id, holder, new_holder, now, lease_until),
            item=f"slot#{slot_id}",
            wcu=1,
        )

    def renew_slot(self, slot_id: int, holder: str, lease_until: float) -> bool:
        return self._call_bool(
            "dynamodb",
            "UpdateItem",
            lambda: self._inner.renew_slot(slot_id, holder, lease_until),
            item=f"slot#{slot_id}",
            wcu=1,
        )

    def release_slot(self, slot_id: int, holder: str, tallies: Any = ()) -> bool:
        return self._call_bool(
            "dynamodb",
            "UpdateItem",
            lambda: self._inner.release_slot(slot_id, holder, tallies),
            item=f"slot#{slot_id}",
            wcu=1,
        )

    def backlog(self) -> Any:
        return self._aws.call("dynamodb", "GetItem", self._inner.backlog, item=self._item, rcu=1)

    def add_backlog(self, level: int, delta: int, tallies: Any = ()) -> int:
        return int(
            self._aws.call(
                "dynamodb",
                "UpdateItem",
                lambda: self._inner.add_backlog(level, delta, tallies),
                item=self._item,
                wcu=self._backlog_wcu(),
            )
        )

    def enqueue(self, level: int, again: bool = False) -> tuple[int, int]:
        count, seq = self._aws.call(
            "dynamodb",
            "UpdateItem",
            lambda: self._inner.enqueue(level, again),
            item=self._item,
            wcu=self._backlog_wcu(),
        )
        return int(count), int(seq)

    def withdraw(self, level: int) -> None:
        self._aws.call(
            "dynamodb", "UpdateItem", lambda: self._inner.withdraw(level), item=self._item, wcu=self._backlog_wcu()
        )

    def commit_pick(self, seen: Any, after: Any, takes: Any, tallies: Any = ()) -> Any:
        # A conditional write that fails its condition still consumes write units.
        taken, state = self._aws.call(
            "dynamodb",
            "UpdateItem",
            lambda: self._inner.commit_pick(seen, after, takes, tallies),
            item=self._item,
            wcu=self._backlog_wcu(),
        )
        if self._aws.enabled:
            with self._aws.meter.lock:
                if taken:
                    self._aws.meter.picks_committed += 1
                else:
                    self._aws.meter.races_lost += 1
        return taken, state


class AwsUsageStore:
    def __init__(self, inner: Any, aws: Aws) -> None:
        self._inner = inner
        self._aws = aws

    def record_submission(self, user_id: str, *args: Any, **kwargs: Any) -> Any:
        return self._aws.call(
            "dynamodb",
            "UpdateItem",
            lambda: self._inner.record_submission(user_id, *args, **kwargs),
            item=f"usage#{user_id}",
            wcu=1,
        )

    def refund(self, user_id: str, *args: Any) -> Any:
        return self._aws.call(
            "dynamodb", "UpdateItem", lambda: self._inner.refund(user_id, *args), item=f"usage#{user_id}", wcu=1
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class AwsTaskStore:
    """Task records: one item per task, spread over partitions, within the table's quota.

    Their global secondary indexes are not spread: ``queued-by-age`` and
    ``running-by-level`` are keyed by the task's level (six values) and ``recent``
    by the hour it finished (one value an hour), so each key's index partition
    takes a unit for every write that adds or removes a task under it, within an
    item's budget (infra/resources.json, chalicelib/adapters/dynamo/tasks.py).
    """

    def __init__(self, inner: Any, aws: Aws, shards: int = 1) -> None:
        self._inner = inner
        self._aws = aws
        self._shards = shards  # index keys spread as DynamoTaskStore spreads them

    def _write(self, operation: str, fn: Callable[[], Any], index_writes: Sequence[str] = ()) -> Any:
        return self._aws.call("dynamodb", operation, fn, item="tasks", wcu=1, index_writes=index_writes)

    def _level_key(self, task_id: str, level: int | None = None) -> int:
        if level is None:
            task = self._inner.get(task_id)  # the model's own look, not a request
            level = 0 if task is None else int(task.priority_level)
        return level + LEVELS * shard_of(task_id, self._shards)

    def _hour(self, task_id: str) -> str:
        return f"recent#{int(self._aws.clock.now() // 3600)}#{shard_of(task_id, self._shards)}"

    def create(self, task: Any) -> None:
        key = self._level_key(task.task_id, task.priority_level)
        self._write("PutItem", lambda: self._inner.create(task), [f"queued-by-age#{key}"])

    def delete(self, task_id: str) -> None:
        key = self._level_key(task_id)
        self._write("DeleteItem", lambda: self._inner.delete(task_id), [f"queued-by-age#{key}"])

    def start(self, task_id: str, *args: Any, **kwargs: Any) -> Any:
        key = self._level_key(task_id)
        indexes = [f"queued-by-age#{key}", f"running-by-level#{key}"]
        return self._write("UpdateItem", lambda: self._inner.start(task_id, *args, **kwargs), indexes)

    def finish(self, task_id: str, *args: Any, **kwargs: Any) -> Any:
        indexes = [f"running-by-level#{self._level_key(task_id)}", self._hour(task_id)]
        return self._write("UpdateItem", lambda: self._inner.finish(task_id, *args, **kwargs), indexes)

    def cancel_pending(self, task_id: str, *args: Any) -> Any:
        indexes = [f"queued-by-age#{self._level_key(task_id)}", self._hour(task_id)]
        return self._write("UpdateItem", lambda: self._inner.cancel_pending(task_id, *args), indexes)

    def get(self, task_id: str) -> Any:
        return self._aws.call("dynamodb", "GetItem", lambda: self._inner.get(task_id), item="tasks", rcu=1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class AwsTaskQueues:
    """Standard SQS queues: no throughput quota binds (FIFO's 300/3,000 per second do not apply)."""

    def __init__(self, inner: Any, aws: Aws) -> None:
        self._inner = inner
        self._aws = aws

    def send(self, level: int, task: Any) -> None:
        self._aws.call("sqs", "SendMessage", lambda: self._inner.send(level, task))

    def receive(self, level: int, max_count: int, wait_seconds: int) -> Any:
        aws = self._aws
        if aws.enabled and wait_seconds == 0:
            # A short poll samples some of SQS's servers: each message it could
            # return is missed with probability 1 - short_poll_keep.
            keep = sum(1 for _ in range(max(1, min(10, max_count))) if aws.random() < aws.short_poll_keep)
            if keep == 0:
                return aws.call("sqs", "ReceiveMessage", lambda: [])
            max_count = keep
        messages = aws.call("sqs", "ReceiveMessage", lambda: self._inner.receive(level, max_count, wait_seconds))
        if aws.enabled and not messages and wait_seconds:
            aws.clock.sleep(wait_seconds)  # a long poll that finds nothing waits it out
        return messages

    def delete(self, level: int, receipt_handle: str) -> None:
        self._aws.call("sqs", "DeleteMessage", lambda: self._inner.delete(level, receipt_handle))

    def delete_many(self, level: int, receipt_handles: list[str]) -> None:
        self._aws.call(
            "sqs",
            "DeleteMessageBatch",
            lambda: self._inner.delete_many(level, receipt_handles),
            requests=math.ceil(len(receipt_handles) / 10),
        )

    def give_back(self, level: int, receipt_handles: list[str], after_seconds: int = 0) -> None:
        self._aws.call(
            "sqs",
            "ChangeMessageVisibilityBatch",
            lambda: self._inner.give_back(level, receipt_handles, after_seconds),
            requests=math.ceil(len(receipt_handles) / 10),
        )

    def send_dead(self, level: int, message: Any, reason: str) -> None:
        self._aws.call("sqs", "SendMessage", lambda: self._inner.send_dead(level, message, reason))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class Lambda:
    """Account concurrency: every running function instance (API, dispatcher, worker) holds one unit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self.invocations: Counter[str] = Counter()
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def acquire(self, function: str) -> bool:
        with self._lock:
            if self.in_use >= self.limit:
                return False
            self.in_use += 1
            self.peak = max(self.peak, self.in_use)
            self.invocations[function] += 1
            return True

    def release(self, function: str, seconds: float) -> None:
        with self._lock:
            self.in_use -= 1
            self.seconds[function] = self.seconds.get(function, 0.0) + seconds


class AwsInvoker:
    """Lambda's asynchronous Invoke: the API call, then the function on a thread of its own later."""

    def __init__(self, aws: Aws, lambdas: Lambda, dispatch: Callable[[], Any], work: Callable[[Any], Any]) -> None:
        self._aws = aws
        self._lambdas = lambdas
        self._dispatch = dispatch
        self._work = work
        self.muted = False  # while the backlog is filled before a run
        self.failures: Counter[str] = Counter()

    def trigger_dispatch(self) -> None:
        if self.muted:
            return
        self._aws.call("lambda", "Invoke", lambda: None)
        self._aws.clock.spawn(self._invoked, "dispatcher", self._dispatch, ())

    def start_worker(self, handoff: Any) -> None:
        if self.muted:
            return
        self._aws.call("lambda", "Invoke", lambda: None)
        self._aws.clock.spawn(self._invoked, "worker", self._work, (handoff,))

    def _invoked(self, function: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        clock = self._aws.clock
        clock.sleep(self._aws.latency("async_start"))
        while not self._lambdas.acquire(function):
            with self._aws.meter.lock:
                self._aws.meter.lambda_throttles += 1
            clock.sleep(ASYNC_THROTTLE_RETRY)
        began = clock.now()
        try:
            fn(*args)
        except Exception as exc:  # a function error: Lambda would retry it; counted
            self.failures[f"{function}: {type(exc).__name__}"] += 1
        finally:
            self._lambdas.release(function, clock.now() - began)
