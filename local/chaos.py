"""Chaos: run the real services on an embedded emulator while injecting faults, then account for every task.

The services, adapters and boto3 clients are the production ones, on moto
(in-process). Lambda is stood in for as the local runner does (worker
invocations on a thread pool, one dispatcher thread that also ticks), and each
invocation may be killed at a chosen point, as a crash or a timeout would stop a
Lambda: from the kill on, every AWS call of that invocation fails, its
``finally`` blocks included, so slots and messages are left as a dead Lambda
leaves them. Faults:

* ``kill_rate``: a worker dies after receiving a message, after marking a task
  STARTED, in the middle of running it, or after recording its outcome;
* ``dispatcher_death_rate``: a dispatcher dies after claiming a slot, before
  handing it to a worker;
* ``throttle_rate``: DynamoDB and SQS answer 503 to this share of requests
  (injected with a botocore ``before-send`` hook; the standard retry mode retries
  up to 4 times, so some calls fail for good);
* ``duplicate_rate``: SQS delivers a message twice;
* ``poison_share``: tasks whose function always fails;
* ``slow_share``: tasks that run ``slow_seconds`` instead of ``task_seconds``, long
  enough that the tasks a worker picked ahead go back to the queue while they run.

Time is compressed, keeping the order of AWS's timings, so that lost leases and
redeliveries happen within seconds: an invocation times out after 5 s (Lambda:
900 s), a task's run lease is 6 s (930 s), queue visibility 7 s (960 s), slot
lease 3 s (60 s), a worker takes no new task after 2 s (240 s), and botocore's
retry back-off is a tenth of its usual length.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from botocore.awsrequest import AWSResponse
from botocore.retries.standard import ExponentialBackoff

from chalicelib import aws
from chalicelib.adapters.dynamo import DynamoControlStore, DynamoTaskStore, DynamoUsageStore
from chalicelib.adapters.sqs import SqsTaskQueues
from chalicelib.domain import FAILURE, SUCCESS, Handoff, QueuedMessage, Task
from chalicelib.services import Services
from chalicelib.settings import load as load_settings
from chalicelib.tasks import TaskContext
from chalicelib.worker import executing
from infra.provision import provision, settings_env

log = logging.getLogger("pqh.chaos")

LAMBDA_TIMEOUT_SECONDS = 5.0
RUN_LEASE_SECONDS = 6
VISIBILITY_SECONDS = 7
SLOT_LEASE_SECONDS = 3
RUNNER_SECONDS = 2
BACKOFF_SCALE = 0.1


class Killed(Exception):
    """A simulated crash or timeout: the invocation stops here."""


@dataclass(frozen=True)
class ChaosConfig:
    tasks: int = 200
    users: int = 8
    capacity: int = 4
    poison_share: float = 0.05
    kill_rate: float = 0.03
    dispatcher_death_rate: float = 0.05
    throttle_rate: float = 0.1
    duplicate_rate: float = 0.05
    task_seconds: float = 0.01
    timeout_seconds: float = 240.0
    seed: int = 7
    # A worker takes no new task after this long; shorter means more hand-offs.
    runner_seconds: float = RUNNER_SECONDS
    slow_share: float = 0.0
    slow_seconds: float = 0.6
    # PQH_PREFETCH_SECONDS: how much work a worker picks ahead (None: the default).
    prefetch_seconds: float | None = None
    # PQH_POLICY (None: the default).
    policy: str | None = None


@dataclass
class ChaosReport:
    submitted: int = 0
    submit_errors: int = 0  # submits refused with an error (retried by the client)
    succeeded: int = 0
    failed: int = 0
    failure_reasons: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)  # never reached SUCCESS or FAILURE
    run_twice: list[str] = field(default_factory=list)  # the task function completed more than once
    poison_not_dead_lettered: list[str] = field(default_factory=list)
    wrong_outcome: list[str] = field(default_factory=list)  # poison that succeeded, or good that failed for no fault
    slots_held_after_lease: int = 0
    lost_states: Counter[str] = field(default_factory=Counter)  # what the lost tasks were left as
    injected: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    # The run's time budget ran out with tasks unfinished or messages still queued:
    # its lost tasks may only have been slow (many faults on one task, a slow machine).
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return (
            not (self.lost or self.run_twice or self.poison_not_dead_lettered or self.wrong_outcome)
            and not self.slots_held_after_lease
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "submitted": self.submitted,
            "submit_errors": self.submit_errors,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "failure_reasons": dict(self.failure_reasons),
            "lost": len(self.lost),
            "lost_states": dict(self.lost_states),
            "run_twice": len(self.run_twice),
            "poison_not_dead_lettered": len(self.poison_not_dead_lettered),
            "wrong_outcome": len(self.wrong_outcome),
            "slots_held_after_lease": self.slots_held_after_lease,
            "injected": dict(self.injected),
            "seconds": round(self.seconds, 1),
            "timed_out": self.timed_out,
        }


class KillSwitch:
    """One invocation's fate: once it fires, every later call of the invocation fails.

    It also fires when the invocation outlives the stand-in Lambda timeout.
    """

    def __init__(self, chaos: Chaos) -> None:
        self._chaos = chaos
        self._began = time.monotonic()
        self.dead = False

    def check(self) -> None:
        if not self.dead and time.monotonic() - self._began > LAMBDA_TIMEOUT_SECONDS:
            self.dead = True
            self._chaos.count("timed out")
        if self.dead:
            raise Killed("this invocation is dead")

    def maybe(self, point: str, rate: float) -> None:
        self.check()
        if self._chaos.roll(rate):
            self.dead = True
            self._chaos.count(f"killed {point}")
            raise Killed(point)


class Faulty:
    """A port whose calls go through an invocation's kill switch (before or after the call)."""

    def __init__(
        self, inner: Any, switch: KillSwitch, before: dict[str, tuple[str, float]], after: dict[str, tuple[str, float]]
    ) -> None:
        self._inner, self._switch, self._before, self._after = inner, switch, before, after

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._switch.check()
            if name in self._before:
                self._switch.maybe(*self._before[name])
            result = attr(*args, **kwargs)
            if name in self._after and (name != "receive" or result):
                self._switch.maybe(*self._after[name])
            return result

        return call


class DuplicatingQueues:
    """SQS's at-least-once delivery made visible: a received message is sometimes queued twice."""

    def __init__(self, inner: SqsTaskQueues, chaos: Chaos) -> None:
        self._inner, self._chaos = inner, chaos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def receive(self, level: int, max_count: int, wait_seconds: int) -> list[QueuedMessage]:
        messages = self._inner.receive(level, max_count, wait_seconds)
        if messages and self._chaos.roll(self._chaos.config.duplicate_rate):
            m = messages[0]
            self._chaos.count("duplicate delivery")
            copy = Task(m.task_id, m.user_id, None, level, m.submitted_at, 0, tag=m.tag)
            with contextlib.suppress(Exception):  # throttled: no duplicate this time
                self._inner.send(level, copy)
        return messages


class Chaos:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self.report = ChaosReport()
        self.completions: Counter[str] = Counter()
        self._stop = threading.Event()
        self._wake = threading.Event()

    # --- randomness and bookkeeping, shared by all threads -----------------

    def roll(self, rate: float) -> bool:
        with self._lock:
            return self._rng.random() < rate

    def count(self, what: str) -> None:
        with self._lock:
            self.report.injected[what] += 1

    # --- the system ----------------------------------------------------------

    def _build(self, prefix: str) -> None:
        dynamodb, sqs = aws.client("dynamodb"), aws.client("sqs")
        provision(prefix, dynamodb, sqs)
        for level in range(6):  # short visibility: redeliveries within seconds
            url = sqs.get_queue_url(QueueName=f"{prefix}-level-{level}")["QueueUrl"]
            sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": str(VISIBILITY_SECONDS)})
        env = {
            **settings_env(prefix),
            "PQH_HANDOFF": "local",
            "PQH_CAPACITY": str(self.config.capacity),
            "PQH_TASK_SECONDS": str(self.config.task_seconds),
            "PQH_LEASE_SECONDS": str(SLOT_LEASE_SECONDS),
            "PQH_RUN_LEASE_SECONDS": str(RUN_LEASE_SECONDS),
        }
        if self.config.prefetch_seconds is not None:
            env["PQH_PREFETCH_SECONDS"] = str(self.config.prefetch_seconds)
        if self.config.policy is not None:
            env["PQH_POLICY"] = self.config.policy
        # Set past load(): it refuses a runner time under a second, as a deployment should.
        self.settings = dataclasses.replace(load_settings(env), runner_seconds=self.config.runner_seconds)
        self.usage = DynamoUsageStore(dynamodb, self.settings.usage_table)
        self.tasks = DynamoTaskStore(dynamodb, self.settings.tasks_table)
        self.queues = SqsTaskQueues(sqs, self.settings.queue_name, self.settings.dlq_name)
        self.control = DynamoControlStore(dynamodb, self.settings.control_table)
        self._pool = ThreadPoolExecutor(max_workers=self.config.capacity + 4, thread_name_prefix="chaos-worker")

    def _services(self, switch: KillSwitch | None, dispatcher: bool = False) -> Services:
        rate = self.config.kill_rate
        queues: Any = DuplicatingQueues(self.queues, self)
        tasks: Any = self.tasks
        control: Any = self.control
        invoker: Any = self
        if switch is not None:
            queues = Faulty(queues, switch, {}, {"receive": ("after receive", rate)})
            tasks = Faulty(
                tasks, switch, {}, {"start": ("after start", rate), "finish": ("after recording the outcome", rate)}
            )
            control = Faulty(control, switch, {}, {})
            if dispatcher:
                invoker = Faulty(
                    self,
                    switch,
                    {"start_worker": ("dispatcher before hand-off", self.config.dispatcher_death_rate)},
                    {},
                )
        return Services(
            settings=self.settings,
            usage=self.usage,
            tasks=tasks,
            queues=queues,
            control=control,
            invoker=invoker,
            task_function=self._task_function(switch),
        )

    def _task_function(self, switch: KillSwitch | None) -> Callable[[Any, TaskContext], Any]:
        def run(x: Any, ctx: TaskContext) -> Any:
            seconds = self.config.slow_seconds if isinstance(x, str) and x.startswith("slow") else ctx.task_seconds
            time.sleep(seconds / 2)
            if switch is not None:
                switch.maybe("mid-run", self.config.kill_rate)
            time.sleep(seconds / 2)
            if switch is not None:
                switch.check()  # a timeout stops the function, too
            if x == "poison":
                raise RuntimeError("poison: this task always fails")
            with self._lock:
                self.completions[ctx.task_id] += 1
            return {"input_x": x}

        return run

    # --- the Invoker port: Lambda stand-ins -----------------------------------

    def start_worker(self, handoff: Handoff) -> None:
        self._pool.submit(self._worker, handoff)

    def trigger_dispatch(self) -> None:
        self._wake.set()

    def _worker(self, handoff: Handoff) -> None:
        switch = KillSwitch(self)
        try:
            self._services(switch).worker.run(handoff)
        except Exception as exc:  # a crashed Lambda: its error goes to the logs, nothing retries it
            log.debug("worker died: %r", exc)

    def _dispatcher_loop(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            woke = self._wake.wait(0.2)
            self._wake.clear()
            tick = time.monotonic() >= next_tick
            if not (woke or tick):
                continue
            if tick:
                next_tick = time.monotonic() + 1.0  # the schedule, every second here
            try:
                self._services(KillSwitch(self), dispatcher=True).dispatching.dispatch(full_walk=tick)
            except Exception as exc:
                log.debug("dispatcher died: %r", exc)

    # --- faults in the AWS calls --------------------------------------------------

    def _throttle(self, request: Any, **kwargs: Any) -> AWSResponse | None:
        if not self.roll(self.config.throttle_rate):
            return None
        self.count("503 from AWS")
        raw = _Raw(b'{"__type": "ServiceUnavailable", "message": "chaos: try again"}')
        return AWSResponse(request.url, 503, {"Content-Type": "application/x-amz-json-1.0"}, raw)

    # --- the run -------------------------------------------------------------------

    def run(self) -> ChaosReport:
        began = time.monotonic()
        quiet = logging.getLogger("pqh")
        saved_level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # the injected faults would fill the log
        prefix = f"pqh-chaos-{uuid.uuid4().hex[:6]}"
        self._build(prefix)
        saved_delays = executing.OUTCOME_RETRY_DELAYS
        executing.OUTCOME_RETRY_DELAYS = tuple(BACKOFF_SCALE * d for d in saved_delays)
        hooks = [(aws.client(name), f"before-send.{name}") for name in ("dynamodb", "sqs")]
        for client, event in hooks:
            client.meta.events.register_first(event, self._throttle, unique_id="pqh-chaos")
        original_delay = ExponentialBackoff.delay_amount
        ExponentialBackoff.delay_amount = lambda backoff, context: BACKOFF_SCALE * original_delay(backoff, context)
        dispatcher = threading.Thread(target=self._dispatcher_loop, name="chaos-dispatcher", daemon=True)
        dispatcher.start()
        try:
            expected = self._submit_all()
            self._wait(expected)
        finally:
            for client, event in hooks:
                client.meta.events.unregister(event, unique_id="pqh-chaos")
            self._stop.set()
            dispatcher.join(timeout=10)
            self._pool.shutdown(wait=True)
            executing.OUTCOME_RETRY_DELAYS = saved_delays
            ExponentialBackoff.delay_amount = original_delay
            quiet.setLevel(saved_level)
        self._account(expected)
        self.report.seconds = time.monotonic() - began
        return self.report

    def _submit_all(self) -> dict[str, bool]:
        """Submit through the API's service, retrying refused submits; task id -> is poison."""
        api = self._services(None)
        expected: dict[str, bool] = {}
        rng = random.Random(self.config.seed + 1)
        for n in range(self.config.tasks):
            poison = rng.random() < self.config.poison_share
            slow = not poison and rng.random() < self.config.slow_share
            user = f"user-{rng.randrange(self.config.users)}"
            for _ in range(20):
                try:
                    task = api.submitting.submit(user, "poison" if poison else f"slow-{n}" if slow else n)
                except Exception:  # the client saw a 503 and tries again; nothing was queued
                    self.report.submit_errors += 1
                    continue
                expected[task.task_id] = poison
                break
            time.sleep(0.002)
        self.report.submitted = len(expected)
        return expected

    def _wait(self, expected: dict[str, bool]) -> None:
        deadline = time.monotonic() + self.config.timeout_seconds
        pending = set(expected)
        while pending and time.monotonic() < deadline:
            for task_id in list(pending):
                with contextlib.suppress(Exception):  # throttled read: look again later
                    task = self.tasks.get(task_id)
                    if task is not None and task.task_status in (SUCCESS, FAILURE):
                        pending.discard(task_id)
            time.sleep(0.5)
        # Then until the queues are empty: a message left by a killed worker (a finished
        # task not yet deleted, a failed one not yet dead-lettered) comes back after
        # its visibility timeout and is dealt with then, as on AWS.
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # throttled: look again
                if all(d.queued + d.in_flight == 0 for d in self.queues.depths()):
                    return
            time.sleep(0.5)
        self.report.timed_out = True

    def _account(self, expected: dict[str, bool]) -> None:
        r = self.report
        dead_lettered: set[str] = set()
        for level in range(6):
            while batch := self.queues.receive_dead(level, 10, hide_seconds=60):
                dead_lettered |= {m.task_id for m in batch}
        for task_id, poison in expected.items():
            task = self.tasks.get(task_id)
            status = task.task_status if task else "MISSING"
            if status == SUCCESS:
                r.succeeded += 1
                if poison:
                    r.wrong_outcome.append(task_id)
            elif status == FAILURE and task is not None:
                r.failed += 1
                reason = "poison" if "poison" in (task.error or "") else (task.error or "no reason")
                r.failure_reasons[reason[:80]] += 1
                if task_id not in dead_lettered:
                    r.poison_not_dead_lettered.append(task_id)
                if not poison and "worker stopped" not in (task.error or ""):
                    r.wrong_outcome.append(task_id)
            else:
                r.lost.append(task_id)
                r.lost_states[f"{status} attempts={task.attempts if task else 0}"] += 1
            if self.completions[task_id] > 1:
                r.run_twice.append(task_id)
        # Slots of dead workers are free once their lease has run out.
        time.sleep(SLOT_LEASE_SECONDS + 0.5)
        now = time.time()
        r.slots_held_after_lease = sum(1 for slot in self.control.slots(self.config.capacity) if not slot.is_free(now))


class _Raw:
    """The raw body botocore reads from an injected response."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self._body

    def read(self, *args: Any) -> bytes:
        body, self._body = self._body, b""
        return body


def run_chaos(config: ChaosConfig) -> ChaosReport:
    """Run one chaos test on an embedded moto (the caller may already be inside mock_aws)."""
    from moto import mock_aws

    from local import moto_patches

    moto_patches.sqs_speed()
    moto_patches.atomic_writes()
    for name in [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL")]:
        del os.environ[name]  # an endpoint would bypass the embedded emulator
    for name, value in (("AWS_ACCESS_KEY_ID", "chaos"), ("AWS_SECRET_ACCESS_KEY", "chaos")):
        os.environ.setdefault(name, value)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        aws.reset()
        try:
            return Chaos(config).run()
        finally:
            aws.reset()
