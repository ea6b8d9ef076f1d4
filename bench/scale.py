"""How far one deployment goes on AWS: a scale model of the real services, checked by experiment.

The services' own submit, dispatch and worker code (bench/scale_shim.py) runs
against the in-memory adapters wrapped with AWS-like latency, per-item DynamoDB
budgets, SQS short polls and Lambda concurrency (bench/scale_model.py).

- The model: a discrete-event simulation. Every simulated Lambda instance is a
  thread that blocks only in the virtual clock's sleep; time jumps to the next
  wake-up. So C = 1,000 slots of 60-s tasks take seconds, not hours.
- The experiment: the same code with real sleeps and real token buckets, 50
  slots, in two regimes (the version race under the real budget, and a backlog
  item scaled down to 100 WCU/s so that its budget binds), and the model's
  prediction for the same parameters, side by side.
- The envelope: C = 1, 10, 100, 1,000 x tasks of 0.1, 1, 60 s, each cell run
  with a backlog deep enough to keep every slot busy if nothing else limits it;
  then the submit rate each cell sustains, from the backlog item's write budget,
  Lambda's and API Gateway's quotas.

    python -m bench.scale [--quick]

Writes bench/results/scale.json and scale.png (--quick: build/scale-quick.json), and build/scale-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import scale_shim as shim
from bench.requests_per_task import PRICES
from bench.scale_model import (
    APIGW_RPS,
    ITEM_RCU_PER_SECOND,
    ITEM_WCU_PER_SECOND,
    LAMBDA_CONCURRENCY,
    LATENCIES,
    Aws,
    AwsControlStore,
    AwsInvoker,
    AwsTaskQueues,
    AwsTaskStore,
    AwsUsageStore,
    ClockExecutor,
    Lambda,
    RealClock,
    VirtualClock,
    backlog_item_bytes,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LAMBDA_GB = 0.25  # lambda_memory_size 256 in .chalice/config.json
SUBMIT_WRITES = 3  # a submit's DynamoDB writes: the usage counters, the backlog item, the task record
SUBMIT_SQS = 1  # and its SendMessage
USERS = 50


class Run:
    """One model (or experiment) run: the services wired to AWS-like ports, a backlog, workers."""

    def __init__(
        self,
        capacity: int,
        task_seconds: float,
        seconds: float,
        warmup: float,
        real: bool = False,
        wcu: float = ITEM_WCU_PER_SECOND,
        rcu: float = ITEM_RCU_PER_SECOND,
        lambda_limit: int = LAMBDA_CONCURRENCY,
        submit_rate: float = 0.0,
        prefill: int = 0,
        seed: int = 1,
        client_seconds: float = 0.0,
        shards: int = 1,
    ) -> None:
        self.capacity, self.task_seconds = capacity, task_seconds
        self.seconds, self.warmup, self.real = seconds, warmup, real
        self.submit_rate, self.prefill = submit_rate, prefill
        self.clock = RealClock(until=seconds) if real else VirtualClock(until=seconds)
        self.aws = Aws(self.clock, seed, wcu, rcu, client_seconds=client_seconds)
        self.client_seconds = client_seconds
        self.lambdas = Lambda(lambda_limit)
        self.control = shim.MemoryControlStore()
        self.runs: dict[int, list[float]] = {}
        self._run_ids = iter(range(1 << 62))
        self.snapshot: dict[str, Any] = {}
        self.shards = shards
        config = shim.settings(capacity, task_seconds, backlog_shards=shards)
        self.invoker = AwsInvoker(
            self.aws,
            self.lambdas,
            lambda: shim.dispatch(self.services),
            lambda handoff: shim.run_worker(self.services, handoff),
        )
        self.services = shim.build_services(
            config,
            AwsUsageStore(shim.MemoryUsageStore(), self.aws),
            AwsTaskStore(shim.MemoryTaskStore(), self.aws, shards),
            AwsTaskQueues(shim.MemoryTaskQueues(clock=self.clock.now), self.aws),
            AwsControlStore(self.control, self.aws),
            self.invoker,
            clock=self.clock.now,
            monotonic=self.clock.now,
            start_timer=self.clock.start_timer,
            sleep=self.clock.sleep,
            task_function=self._task,
            side_pool=lambda: ClockExecutor(self.clock, inline=lambda: not self.aws.enabled),
        )

    def _task(self, x: Any, ctx: Any) -> dict[str, int]:
        run_id = next(self._run_ids)
        self.runs[run_id] = [self.clock.now(), math.inf]
        self.clock.sleep(self.task_seconds)
        self.runs[run_id][1] = self.clock.now()
        return {"n": 1}

    def _submitter(self) -> None:
        """Poisson arrivals at submit_rate; each submit is an API Lambda of its own."""
        rng_state = self.aws
        n = 0
        while True:
            with rng_state._rng_lock:
                gap = rng_state.rng.expovariate(self.submit_rate)
            self.clock.sleep(gap)
            n += 1
            self.clock.spawn(self._submit_one, f"user{n % USERS}", n)

    def _submit_one(self, user: str, n: int) -> None:
        began = self.clock.now()
        if not self.lambdas.acquire("api"):
            with self.aws.meter.lock:
                self.aws.meter.submits.append((began, 0.0, False))
                self.aws.meter.lambda_throttles += 1
            return
        accepted = True
        try:
            shim.submit(self.services, user, {"n": n})
        except Exception:
            accepted = False
        finally:
            self.lambdas.release("api", self.clock.now() - began)
        with self.aws.meter.lock:
            self.aws.meter.submits.append((began, self.clock.now() - began, accepted))

    def _tick(self) -> None:
        while True:  # EventBridge's schedule: a dispatcher run every minute
            self.invoker.trigger_dispatch()
            self.clock.sleep(60.0)

    def _snapshot_at_warmup(self) -> None:
        self.clock.sleep(self.warmup)
        self.snapshot = self._counters()

    def _counters(self) -> dict[str, Any]:
        m = self.aws.meter
        with m.lock:
            return {
                "requests": Counter(m.requests),
                "wcu": Counter(m.wcu),
                "rcu": Counter(m.rcu),
                "throttles": Counter(m.throttles),
                "errors": Counter(m.errors),
                "races_lost": m.races_lost,
                "picks": m.picks_committed,
                "lambda_throttles": m.lambda_throttles,
                "invocations": Counter(self.lambdas.invocations),
                "lambda_seconds": Counter(self.lambdas.seconds),
                "cpu": time.process_time(),
            }

    def go(self) -> dict[str, Any]:
        wall = time.monotonic()
        self.aws.enabled, self.invoker.muted = False, True
        for n in range(self.prefill):
            shim.submit(self.services, f"user{n % USERS}", {"n": n})
        self.aws.enabled, self.invoker.muted = True, False
        self.clock.spawn(self._tick)
        self.clock.spawn(self._snapshot_at_warmup)
        if self.submit_rate > 0:
            self.clock.spawn(self._submitter)
        self.clock.run()
        # Counts summed over the shards; the item measured is shard 0's (they are alike).
        end_state = shim.combined(self.control.backlogs(self.shards))
        return self._report(end_state, time.monotonic() - wall)

    def _report(self, end_state: Any, wall: float) -> dict[str, Any]:
        start, end = self.warmup, self.seconds
        window = end - start
        done = self._counters()
        before = self.snapshot or {k: (Counter() if isinstance(v, Counter) else 0) for k, v in done.items()}

        def delta(name: str) -> Any:
            return done[name] - before[name]

        runs = list(self.runs.values())
        starts = sum(1 for a, _ in runs if start <= a < end)
        busy = sum(max(0.0, min(b, end) - max(a, start)) for a, b in runs)
        requests = delta("requests")
        # Tasks run in the window, counted by their share of it: a 60-s task half in
        # the window counts a half (counting starts alone is lumpy for long tasks).
        tasks = busy / self.task_seconds
        per_task = max(1.0, tasks)
        # The busiest backlog item's writes (with shards, each shard's record is an item).
        wcu_backlog = max((n for item, n in delta("wcu").items() if item.startswith("backlog")), default=0)
        submits = [s for s in self.aws.meter.submits if start <= s[0] < end]
        accepted = [s for s in submits if s[2]]
        latencies = sorted(s[1] for s in accepted)
        invocations = delta("invocations")
        lambda_seconds = delta("lambda_seconds")
        dynamo_writes = sum(delta("wcu").values())
        dynamo_reads = sum(delta("rcu").values())
        sqs = sum(n for op, n in requests.items() if op.startswith("sqs:"))
        lambda_requests = invocations["worker"] + invocations["dispatcher"]
        cost = (
            dynamo_writes * PRICES["DynamoDB write request unit"]
            + dynamo_reads * PRICES["DynamoDB read request unit"]
            + sqs * PRICES["SQS request"]
            + lambda_requests * PRICES["Lambda request"]
            # Overhead functions only: the dispatchers' whole runs, not the workers' (they run the tasks).
            + lambda_seconds["dispatcher"] * LAMBDA_GB * PRICES["Lambda GB-second"]
        ) / per_task
        # What the API side adds per task: its request, its Lambda request and run (a submit's latency).
        submit_p50 = latencies[len(latencies) // 2] if latencies else None
        # The submit's own calls (docs/architecture.md): two UpdateItem and a PutItem of
        # under 1 KB, and a SendMessage; its dispatcher Invoke only under a shallow backlog.
        api_cost = PRICES["API Gateway REST request"] + PRICES["Lambda request"]
        api_cost += (submit_p50 or 0.025) * LAMBDA_GB * PRICES["Lambda GB-second"]
        api_cost += SUBMIT_WRITES * PRICES["DynamoDB write request unit"] + SUBMIT_SQS * PRICES["SQS request"]
        queued_left = sum(end_state.counts)
        return {
            "capacity": self.capacity,
            "task_seconds": self.task_seconds,
            "backlog_shards": self.shards,
            # A run the simulator's real-time bound stopped early: its figures are of [warmup, reached].
            "stopped_early_at": round(self.clock.now(), 2) if getattr(self.clock, "timed_out", False) else None,
            "clock": "real" if self.real else "virtual",
            "seconds": self.seconds,
            "warmup": self.warmup,
            "prefill": self.prefill,
            "submit_rate_offered": self.submit_rate,
            "tasks_started_per_second": _round(tasks / window),
            "tasks_started_counted": starts,
            "busy_share": round(busy / (self.capacity * window), 4),
            "picks_lost_to_races_per_task": round(delta("races_lost") / per_task, 3),
            "pick_attempts_per_task": round((delta("races_lost") + delta("picks")) / per_task, 3),
            "backlog_wcu_per_second": round(wcu_backlog / window, 1),
            "backlog_wcu_per_write": math.ceil(backlog_item_bytes(end_state) / 1024),
            "backlog_item_bytes": backlog_item_bytes(end_state),
            "throttled_attempts": dict(delta("throttles")),
            "failed_after_retries": dict(delta("errors")),
            "lambda_throttles": delta("lambda_throttles"),
            "lambda_peak_concurrency": self.lambdas.peak,
            "worker_errors": dict(self.invoker.failures),
            "submits_per_second": round(len(accepted) / window, 2),
            "submits_refused": len(submits) - len(accepted),
            "submit_p50_ms": None if not latencies else round(1000 * latencies[len(latencies) // 2], 1),
            "submit_p99_ms": None if not latencies else round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
            "requests_per_task": {op: round(n / per_task, 3) for op, n in sorted(requests.items())},
            "aws_requests_per_task_workers": round(
                (sum(requests.values()) + invocations["worker"] + invocations["dispatcher"]) / per_task, 2
            ),
            "aws_requests_per_task": round(
                (sum(requests.values()) + invocations["worker"] + invocations["dispatcher"]) / per_task
                + SUBMIT_WRITES
                + SUBMIT_SQS,
                2,
            ),
            "cost_per_million_tasks_usd_workers": round(cost * 1e6, 2),
            "cost_per_million_tasks_usd_api": round(api_cost * 1e6, 2),
            "queued_left": queued_left,
            "backlog_drained": queued_left == 0,
            # This process's CPU per AWS call in the window (the experiment's own cost of a call).
            "cpu_ms_per_call": round(1000 * delta("cpu") / max(1, sum(requests.values())), 3),
            "client_ms_per_call": 1000 * self.client_seconds,
            "wall_seconds": round(wall, 1),
            "simulated_events": self.clock.events,
        }


# --- the envelope -----------------------------------------------------------------


QUOTAS = ("Lambda concurrency (1,000 per account)", "API Gateway (10,000 requests/s per account)")


def limits(cell: dict[str, Any], submit_requests: float, submit_wcu: float) -> dict[str, Any]:
    """Each limit as a rate of tasks (submitted and started) per second, and which binds first.

    A steady state submits as many tasks as it starts. The backlog item takes one
    enqueue write per submit and the picks' writes (won and lost) per start; the
    account's Lambda concurrency holds the C workers and one API instance per submit
    in flight; API Gateway counts the submit and one GET /result per task. The
    measured rate, when the slots are not kept busy, is what the workers' side
    reached: throttled by the backlog item's budget, or held back by the version
    race or by the round trips around each task.
    """
    capacity, task_seconds = cell["capacity"], cell["task_seconds"]
    w = cell["backlog_wcu_per_write"]
    attempts = cell["pick_attempts_per_task"]
    started = cell["tasks_started_per_second"]
    submit_seconds = (cell.get("submit_p50_ms") or 25.0) / 1000
    budget = "backlog item write budget (1,000 WCU/s per partition)"
    found = {
        "slots (PQH_CAPACITY)": capacity / task_seconds,
        budget: ITEM_WCU_PER_SECOND / (w * (submit_wcu + attempts)),
        QUOTAS[0]: max(0.0, LAMBDA_CONCURRENCY - capacity - 1) / submit_seconds,
        QUOTAS[1]: APIGW_RPS / submit_requests,
    }
    if cell["busy_share"] < 0.9:
        if cell["throttled_attempts"]:
            found[budget] = min(found[budget], started)
        elif cell["picks_lost_to_races_per_task"] >= 2:  # beyond the one a stale snapshot costs
            found["pick version race (one conditional write at a time on one item)"] = started
        else:
            found["round trips around each task (pick, start and outcome writes)"] = started
    ranked = sorted(found, key=lambda k: found[k])
    design = [k for k in ranked if k not in QUOTAS and not k.startswith("slots")]
    return {
        "limits_tasks_per_second": {k: _round(v) for k, v in found.items()},
        "binds_first": ranked[0],
        "binds_next": ranked[1],
        "first_limit_of_the_design": design[0],
        "sustainable_submits_per_second": _round(found[ranked[0]]),
        # With the account quotas raised (Service Quotas): what the design itself sustains.
        "sustainable_submits_per_second_quotas_raised": _round(min(v for k, v in found.items() if k not in QUOTAS)),
    }


def _round(value: float) -> float:
    return round(value, 3) if abs(value) < 10 else round(value, 1)


def envelope(quick: bool) -> list[dict[str, Any]]:
    capacities = (1, 10, 100) if quick else (1, 10, 100, 1000)
    lengths = (0.1, 1.0, 60.0)
    cells = []
    for capacity in capacities:
        for task_seconds in lengths:
            if task_seconds == 60.0:
                seconds, warmup = (200.0, 60.0) if not quick else (130.0, 60.0)
            else:
                seconds, warmup = (30.0, 10.0) if not quick else (8.0, 3.0)
            if capacity == 1000 and task_seconds < 60:
                seconds, warmup = 15.0, 5.0
            demand = capacity / task_seconds * seconds * 1.3
            # Enough to keep every slot busy for the run, up to 12,000: the backlog item
            # lets through a few hundred a second, and the in-memory queues slow down
            # with depth. A run whose backlog drains says so (backlog_drained).
            prefill = int(min(max(demand, 2 * capacity + 20), 12_000 if not quick else 8_000))
            run = Run(capacity, task_seconds, seconds, warmup, prefill=prefill)
            cell = run.go()
            print(
                f"  C={capacity:>5} task={task_seconds:>5}s: {cell['tasks_started_per_second']:>8}/s started, "
                f"busy {cell['busy_share']:.0%}, races/task {cell['picks_lost_to_races_per_task']}, "
                f"backlog {cell['backlog_wcu_per_second']} WCU/s, wall {cell['wall_seconds']} s",
                flush=True,
            )
            cells.append(cell)
    return cells


def submit_path(quick: bool) -> dict[str, Any]:
    """Submits alone (no worker can take a slot: C = 0 is not allowed, so slots are held by a long task).

    Measures a submit's latency and its AWS requests, and where the backlog item
    starts refusing submits: offered 600, 1,000 and 1,400 submits/s. Then a submit
    below capacity, which also nudges the dispatcher (C = 100 slots, 50 submits/s).
    """
    out = {}
    for rate in (600.0, 1000.0, 1400.0) if not quick else (1000.0,):
        run = Run(1, 10_000.0, 8.0 if not quick else 5.0, 2.0, submit_rate=rate, prefill=3)
        cell = run.go()
        out[str(int(rate))] = {
            "offered": rate,
            "accepted_per_second": cell["submits_per_second"],
            "refused": cell["submits_refused"],
            "p50_ms": cell["submit_p50_ms"],
            "p99_ms": cell["submit_p99_ms"],
            "backlog_wcu_per_second": cell["backlog_wcu_per_second"],
            "throttled_attempts": cell["throttled_attempts"],
            "wall_seconds": cell["wall_seconds"],
        }
        print(
            f"  submits offered {rate:.0f}/s: accepted {cell['submits_per_second']}/s, "
            f"refused {cell['submits_refused']}, p50 {cell['submit_p50_ms']} ms p99 {cell['submit_p99_ms']} ms, "
            f"backlog {cell['backlog_wcu_per_second']} WCU/s",
            flush=True,
        )
    # Below capacity every submit nudges the dispatcher (a Lambda Invoke): 100 slots of
    # 1-s tasks, 50 submits/s, nothing queued before, so the count stays under C.
    run = Run(100, 1.0, 12.0, 2.0, submit_rate=50.0, prefill=0)
    cell = run.go()
    out["50 nudging"] = {
        "offered": 50.0,
        "capacity": 100,
        "accepted_per_second": cell["submits_per_second"],
        "refused": cell["submits_refused"],
        "p50_ms": cell["submit_p50_ms"],
        "p99_ms": cell["submit_p99_ms"],
        "backlog_wcu_per_second": cell["backlog_wcu_per_second"],
        "throttled_attempts": cell["throttled_attempts"],
        "wall_seconds": cell["wall_seconds"],
    }
    print(
        f"  submits offered 50/s below capacity (each nudges the dispatcher): accepted {cell['submits_per_second']}/s, "
        f"p50 {cell['submit_p50_ms']} ms p99 {cell['submit_p99_ms']} ms",
        flush=True,
    )
    return out


# Backlog shards (PQH_BACKLOG_SHARDS): the one-item ceiling lifted. Lambda's quota is
# raised to 1,200 here (C = 1,000 workers plus the API and the dispatchers).
SHARDED_LAMBDA_LIMIT = 1200
SHARDED_KEYS = (
    "capacity",
    "task_seconds",
    "backlog_shards",
    "submit_rate_offered",
    "stopped_early_at",
    "tasks_started_per_second",
    "busy_share",
    "picks_lost_to_races_per_task",
    "backlog_wcu_per_second",
    "aws_requests_per_task_workers",
    "aws_requests_per_task",
    "throttled_attempts",
    "lambda_peak_concurrency",
    "submits_per_second",
    "submits_refused",
    "submit_p50_ms",
    "submit_p99_ms",
    "queued_left",
)


def sharded(quick: bool) -> dict[str, Any]:
    """C = 1,000 slots of 1-s tasks with 1, 8 and 32 shards, then 2,000 submits a second sustained.

    The 1-s runs last 40 s and measure the last 12: the dispatcher claims slots and
    invokes workers one after another (about 20 ms each), so 1,000 slots take about
    20 s to fill from idle. The sustained run starts empty: every task is submitted
    during the run (C = 1,000 slots of 0.1-s tasks, 32 shards).
    """
    out: dict[str, Any] = {"capacity_1000_1s": []}
    for shards in (1, 8, 32) if not quick else (8,):
        seconds, warmup, prefill = (40.0, 28.0, 45_000) if not quick else (30.0, 22.0, 20_000)
        cell = Run(1000, 1.0, seconds, warmup, prefill=prefill, shards=shards, lambda_limit=SHARDED_LAMBDA_LIMIT).go()
        out["capacity_1000_1s"].append({k: cell.get(k) for k in SHARDED_KEYS})
        print(
            f"  C=1000 1-s tasks, {shards:>2} shards: {cell['tasks_started_per_second']}/s started, "
            f"busy {cell['busy_share']:.0%}, races/task {cell['picks_lost_to_races_per_task']}, "
            f"busiest backlog item {cell['backlog_wcu_per_second']} WCU/s, throttled {cell['throttled_attempts']}",
            flush=True,
        )
    # 2,000 submits a second at a quarter of the scale, every item loaded as at full
    # scale: C = 250 and 8 shards (31 slots and 62.5 submits a second per shard, as
    # C = 1,000 with 32 shards at 2,000 a second). The full-scale run takes the
    # simulator over ten minutes; the account-wide limits (Lambda, API Gateway, the
    # tasks table) are checked by arithmetic in docs/scaling.md.
    if not quick:
        cell = Run(
            250, 0.45, 40.0, 25.0, submit_rate=500.0, prefill=8000, shards=8, lambda_limit=SHARDED_LAMBDA_LIMIT
        ).go()
        out["sustained_quarter_scale"] = {k: cell.get(k) for k in SHARDED_KEYS}
        print(
            f"  500 submits/s offered, C=250 0.45-s tasks, 8 shards (a quarter of 2,000/s, C=1,000, 32 shards): "
            f"accepted {cell['submits_per_second']}/s (refused {cell['submits_refused']}), started "
            f"{cell['tasks_started_per_second']}/s, p50 {cell['submit_p50_ms']} ms p99 {cell['submit_p99_ms']} ms, "
            f"queued at the end {cell['queued_left']}, stopped early at {cell['stopped_early_at']}",
            flush=True,
        )
    return out


# --- the experiment -----------------------------------------------------------------

# Two regimes, 50 slots each: the version race alone (the real 1,000 WCU/s budget,
# which 50 slots of 0.5-s tasks stay under), and the backlog item's budget scaled
# down to 100 WCU/s so that it binds (as 1,000 WCU/s binds at C = 1,000 on AWS).
VALIDATIONS: dict[str, dict[str, Any]] = {
    "race": dict(capacity=50, task_seconds=0.5, seconds=16.0, warmup=4.0, wcu=1000.0, submit_rate=20.0),
    "budget": dict(capacity=50, task_seconds=0.2, seconds=16.0, warmup=4.0, wcu=100.0, submit_rate=40.0),
}
COMPARED = (
    "tasks_started_per_second",
    "busy_share",
    "picks_lost_to_races_per_task",
    "pick_attempts_per_task",
    "backlog_wcu_per_second",
    "submits_per_second",
    "submit_p50_ms",
    "aws_requests_per_task_workers",
)


def steady_state(cells: list[dict[str, Any]], quick: bool) -> list[dict[str, Any]]:
    """The envelope's sustainable rate checked: submits and workers together, no prefilled backlog.

    C = 100 slots of 0.1-s tasks, submits offered at the rate the envelope says
    is sustainable and at 1.5 times it: at the first the queue stays short; at the
    second the backlog item refuses writes and the queue grows.
    """
    cell = next(c for c in cells if c["capacity"] == 100 and c["task_seconds"] == 0.1)
    rate = cell["sustainable_submits_per_second"]
    out = []
    for factor in (1.0, 1.5):
        run = Run(100, 0.1, 20.0 if not quick else 12.0, 6.0, submit_rate=rate * factor, prefill=0)
        result = run.go()
        row = {
            "capacity": 100,
            "task_seconds": 0.1,
            "offered_per_second": round(rate * factor, 1),
            **{
                k: result[k]
                for k in (
                    "submits_per_second",
                    "submits_refused",
                    "submit_p50_ms",
                    "submit_p99_ms",
                    "tasks_started_per_second",
                    "queued_left",
                    "backlog_wcu_per_second",
                    "picks_lost_to_races_per_task",
                )
            },
        }
        print(f"  offered {row['offered_per_second']}/s: {row}", flush=True)
        out.append(row)
    return out


def race_alone(quick: bool) -> dict[str, Any]:
    """C = 1,000 slots of 1-s tasks with the backlog item's budget (and Lambda's quota) unlimited.

    What the version race alone allows, once the write budget no longer binds.
    """
    # Shorter runs measure the start-up convoy (every worker's first pick at once),
    # not the steady state: 8 s gave 226 starts/s and 13 losses per task, 15 s 342 and 70.
    seconds, warmup = (15.0, 5.0) if not quick else (8.0, 3.0)
    run = Run(1000, 1.0, seconds, warmup, wcu=1e9, lambda_limit=100_000, prefill=int(1000 * seconds * 1.3))
    cell = run.go()
    keys = ("tasks_started_per_second", "busy_share", "picks_lost_to_races_per_task", "backlog_wcu_per_second")
    row = {"capacity": 1000, "task_seconds": 1.0, **{k: cell[k] for k in keys}, "wall_seconds": cell["wall_seconds"]}
    print(f"  {row}", flush=True)
    return row


def sensitivity(quick: bool) -> list[dict[str, Any]]:
    """The envelope assumes no client time per call; a small Lambda spends several ms of CPU on each."""
    out = []
    for client_ms in (0.0, 2.0, 8.0) if not quick else (0.0, 8.0):
        cell = Run(100, 1.0, 20.0 if not quick else 12.0, 5.0, prefill=3000, client_seconds=client_ms / 1000).go()
        row = {
            "capacity": 100,
            "task_seconds": 1.0,
            "client_ms_per_call": client_ms,
            **{k: cell[k] for k in ("tasks_started_per_second", "busy_share", "picks_lost_to_races_per_task")},
            "backlog_wcu_per_second": cell["backlog_wcu_per_second"],
        }
        print(f"  C=100 1-s tasks, {client_ms:g} ms client time per call: {row}", flush=True)
        out.append(row)
    return out


def validate(quick: bool) -> dict[str, Any]:
    """50 slots for real (threads, sleeps, token buckets) and the model with the same parameters."""
    out = {}
    for name, params in VALIDATIONS.items():
        if quick and name == "race":
            continue
        params = dict(params)
        if quick:
            params.update(seconds=12.0, warmup=4.0)
        demand = params["capacity"] / params["task_seconds"] * params["seconds"] * 1.3
        real = Run(**params, real=True, prefill=int(demand)).go()
        model = Run(**params, real=False, prefill=int(demand)).go()
        # The same, with the experiment's own CPU per call spent before each call.
        cpu = real["cpu_ms_per_call"] / 1000
        with_cpu = Run(**params, real=False, prefill=int(demand), client_seconds=cpu).go()
        runs = {"experiment": real, "model": model, "model_with_cpu": with_cpu}
        rows = {key: {label: run[key] for label, run in runs.items()} for key in COMPARED}
        rows["throttled_attempts"] = {label: sum(run["throttled_attempts"].values()) for label, run in runs.items()}
        print(f"  {name}: {params}; the experiment spent {real['cpu_ms_per_call']} ms of CPU per call")
        print(f"  {'':34} {'experiment':>12} {'model':>12} {'model+CPU':>12}")
        for key, row in rows.items():
            values = " ".join(f"{v!s:>12}" for v in row.values())
            print(f"  {key:34} {values}", flush=True)
        out[name] = {"parameters": params, "side_by_side": rows, **runs}
    return out


# --- output ---------------------------------------------------------------------------


def plot(cells: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  matplotlib is not installed: no plot")
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for task_seconds, colour in ((0.1, "tab:red"), (1.0, "tab:blue"), (60.0, "tab:green")):
        row = [c for c in cells if c["task_seconds"] == task_seconds]
        xs = [c["capacity"] for c in row]
        left.plot(
            xs, [c["tasks_started_per_second"] for c in row], "o-", color=colour, label=f"{task_seconds:g}-s tasks"
        )
        left.plot(xs, [x / task_seconds for x in xs], ":", color=colour, alpha=0.6)
        right.plot(xs, [c["busy_share"] for c in row], "o-", color=colour, label=f"{task_seconds:g}-s tasks")
    left.set(xscale="log", yscale="log", xlabel="capacity C (slots)", ylabel="tasks started / s")
    left.set_title("tasks started (dotted: C / task length)")
    right.set(xscale="log", xlabel="capacity C (slots)", ylabel="share of capacity busy", ylim=(0, 1.05))
    right.set_title("share of capacity kept busy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("pqh on AWS, modelled: one backlog item written by every submit and pick")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer cells, shorter runs (under a minute)")
    parser.add_argument(
        "--sharded-only",
        action="store_true",
        help="run the backlog shards section alone and replace it in bench/results/scale.json (about 10 minutes)",
    )
    args = parser.parse_args(argv)
    logging.getLogger("pqh").setLevel(logging.CRITICAL)
    sys.setswitchinterval(0.001)
    began = time.monotonic()
    if args.sharded_only:
        saved = json.loads((RESULTS / "scale.json").read_text())
        print("backlog shards: C = 1,000 slots of 1-s tasks, and 2,000 submits a second", flush=True)
        saved["sharded"] = sharded(quick=False)
        (RESULTS / "scale.json").write_text(json.dumps(saved, indent=1, default=str) + "\n")
        print(f"replaced the sharded section of bench/results/scale.json in {time.monotonic() - began:.0f} s")
        return 0
    print("validation: the experiment (real threads and sleeps) and the model, same parameters", flush=True)
    validation = validate(args.quick)
    print("submit path", flush=True)
    submits = submit_path(args.quick)
    sensitive: list[dict[str, Any]] = []
    if not args.quick:
        print("sensitivity to the client's time per call", flush=True)
        sensitive = sensitivity(args.quick)
    unbudgeted: dict[str, Any] = {}
    if not args.quick:  # about a minute of simulation: not in the quick run
        print("the version race alone: C = 1,000, 1-s tasks, no write budget", flush=True)
        unbudgeted = race_alone(args.quick)
    print("envelope (model)", flush=True)
    cells = envelope(args.quick)
    submit_requests = 1 + 1  # POST /task and one GET /result per task
    for cell in cells:
        cell.update(limits(cell, submit_requests, submit_wcu=1))
    steady: list[dict[str, Any]] = []
    if not args.quick:
        print("steady state at the sustainable rate, and above it", flush=True)
        steady = steady_state(cells, args.quick)
    print("backlog shards: C = 1,000 slots of 1-s tasks, and 2,000 submits a second", flush=True)
    shards = sharded(args.quick)
    result = {
        "quick": args.quick,
        "assumptions": {
            "latency": {
                k: {"median_s": v.median, "sigma": v.sigma, "p99_s": round(v.quantile(0.99), 4)}
                for k, v in LATENCIES.items()
            },
            "item_wcu_per_second": ITEM_WCU_PER_SECOND,
            "item_rcu_per_second": ITEM_RCU_PER_SECOND,
            "lambda_concurrency": LAMBDA_CONCURRENCY,
            "apigw_rps": APIGW_RPS,
            "prices_usd": PRICES,
            "lambda_gb": LAMBDA_GB,
        },
        "validation": validation,
        "submit_path": submits,
        "sensitivity": sensitive,
        "steady_state": steady,
        "race_alone": unbudgeted,
        "envelope": cells,
        "sharded": shards,
        "wall_seconds": round(time.monotonic() - began, 1),
    }
    text = json.dumps(result, indent=1, default=str) + "\n"
    stamped = ROOT / "build" / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    stamped.parent.mkdir(exist_ok=True)
    stamped.write_text(text)
    # The latest full run only is kept with the project; quick runs stay in build/.
    latest = ROOT / "build" / "scale-quick.json" if args.quick else RESULTS / "scale.json"
    latest.write_text(text)
    if not args.quick:
        plot(cells, RESULTS / "scale.png")
    print(
        f"\n{'C':>5} {'task':>5} {'submits/s':>10} {'(raised)':>9} {'started/s':>10} {'busy':>6} "
        f"{'races/task':>10} {'req/task':>8} {'$/M tasks':>9}  binds first / first limit of the design"
    )
    for c in cells:
        print(
            f"{c['capacity']:>5} {c['task_seconds']:>5g} {c['sustainable_submits_per_second']:>10} "
            f"{c['sustainable_submits_per_second_quotas_raised']:>9} "
            f"{c['tasks_started_per_second']:>10} {c['busy_share']:>6.0%} {c['picks_lost_to_races_per_task']:>10} "
            f"{c['aws_requests_per_task']:>8} "
            f"{c['cost_per_million_tasks_usd_workers'] + c['cost_per_million_tasks_usd_api']:>9.2f}  "
            f"{c['binds_first']} / {c['first_limit_of_the_design']}"
        )
    print(f"\nwrote {latest.relative_to(ROOT)} in {result['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
