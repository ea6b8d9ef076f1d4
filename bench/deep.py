"""Submit path and dispatch at queue depths 0, 2,000 and 10,000 (`make bench`).

One local system (embedded moto server, Chalice's local server), capacity 4,
tasks that last 10 minutes: the first four occupy every slot, so nothing drains
and the queues stay as deep as the benchmark makes them. At each depth:

* submit: 8 concurrent HTTP clients, 2,000 POST /task from 200 users: req/s, p50, p99;
* hand-off: one dispatcher invocation handing 100 free slots to workers (the
  services in this process, on the same emulator, capacity 104: slots 4-103);
* picks: a worker taking, running (a no-op task) and deleting 100 tasks from the
  deep levels: tasks per second.

200 submits warm the system up first; they stay queued, and each row says how
many tasks were queued before it (200, 2,200 and 10,000 by default).

Levels 4 and 5 are filled directly on the emulator (records, messages and
counts, as submits would leave them), in batches.

    python -m bench.deep [--requests 2000] [--depths 0,2000,10000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import requests

from bench.dispatch import machine, percentile
from bench.saved import save, shown
from chalicelib import aws
from chalicelib.adapters.dynamo import DynamoControlStore, DynamoTaskStore, DynamoUsageStore
from chalicelib.adapters.memory import RecordingInvoker
from chalicelib.adapters.sqs import SqsTaskQueues
from chalicelib.domain import Task
from chalicelib.services import Services
from chalicelib.settings import load as load_settings
from chalicelib.worker.deletes import PendingDeletes
from infra.provision import settings_env
from local.process import LocalSystem, start_local_system

CAPACITY = 4
WARM_UP = 200  # submits before the first measurement; they stay queued


def submit_load(system: LocalSystem, total: int, clients: int = 8) -> dict[str, float]:
    per_client = total // clients

    def client(number: int) -> list[float]:
        session = requests.Session()
        latencies = []
        for i in range(per_client):
            body: dict[str, Any] = {"x": i, "user_id": f"bench-{(number * per_client + i) % 200}"}
            began = time.perf_counter()
            response = session.post(f"{system.base_url}/task", json=body, timeout=30)
            latencies.append(time.perf_counter() - began)
            if response.status_code != 202:
                raise RuntimeError(f"submit answered {response.status_code}: {response.text[:200]}")
        return latencies

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        latencies = [x for part in pool.map(client, range(clients)) for x in part]
    wall = time.perf_counter() - began
    return {
        "requests": len(latencies),
        "req_per_s": len(latencies) / wall,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
        "mean_ms": 1000 * statistics.mean(latencies),
    }


class Bench:
    """The services of this process, on the local system's emulator and tables."""

    def __init__(self, system: LocalSystem, prefix: str) -> None:
        os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{system.emulator_port}"
        if system.sqs_emulator_port:
            os.environ["AWS_ENDPOINT_URL_SQS"] = f"http://127.0.0.1:{system.sqs_emulator_port}"
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
            os.environ.setdefault(name, value)
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        aws.reset()
        self.settings = load_settings({**settings_env(prefix), "PQH_HANDOFF": "local", "PQH_TASK_SECONDS": "0"})
        self.dynamodb, self.sqs = aws.client("dynamodb"), aws.client("sqs")
        self.tasks = DynamoTaskStore(self.dynamodb, self.settings.tasks_table)
        self.control = DynamoControlStore(self.dynamodb, self.settings.control_table)
        self.queues = SqsTaskQueues(self.sqs, self.settings.queue_name, self.settings.dlq_name)
        self.usage = DynamoUsageStore(self.dynamodb, self.settings.usage_table)

    def services(self, capacity: int) -> Services:
        return Services(
            settings=replace(self.settings, capacity=capacity),
            usage=self.usage,
            tasks=self.tasks,
            queues=self.queues,
            control=self.control,
            invoker=RecordingInvoker(),
            task_function=lambda x, ctx: None,
        )

    def fill(self, count: int) -> None:
        """Queue ``count`` tasks at levels 4 and 5, as submits would (records, messages, counts)."""
        now = time.time()
        per_level = {4: count // 2, 5: count - count // 2}
        for level, n in per_level.items():
            url = self.queues.url(level)
            for start in range(0, n, 25):
                batch = [
                    Task(str(uuid.uuid4()), f"deep-{i % 50}", i, level, now, int(now) + 86400, tag=30.0 + level)
                    for i in range(start, min(n, start + 25))
                ]
                items = [
                    {
                        "PutRequest": {
                            "Item": {
                                "task_id": {"S": t.task_id},
                                "user_id": {"S": t.user_id},
                                "x": {"S": json.dumps(t.x)},
                                "priority_level": {"N": str(level)},
                                "submitted_at": {"N": repr(now)},
                                "expires_at": {"N": str(t.expires_at)},
                                "task_status": {"S": "PENDING"},
                                "tag": {"N": repr(t.tag)},
                                "queue_seq": {"N": "0"},
                            }
                        }
                    }
                    for t in batch
                ]
                self.dynamodb.batch_write_item(RequestItems={self.settings.tasks_table: items})
                for part in (batch[:10], batch[10:20], batch[20:]):
                    if part:
                        self.sqs.send_message_batch(
                            QueueUrl=url,
                            Entries=[
                                {
                                    "Id": str(k),
                                    "MessageBody": json.dumps(
                                        {"task_id": t.task_id, "user_id": t.user_id, "submitted_at": now, "tag": t.tag}
                                    ),
                                }
                                for k, t in enumerate(part)
                            ],
                        )
            self.control.add_backlog(level, n)

    def hand_off(self, free: int) -> dict[str, float]:
        """One dispatcher invocation with ``free`` free slots (after the local system's own)."""
        svc = self.services(CAPACITY + free)
        began = time.perf_counter()
        report = svc.dispatching.dispatch()
        seconds = time.perf_counter() - began
        for handoff in svc.deps.invoker.take_handoffs():  # type: ignore[attr-defined]
            svc.deps.control.release_slot(handoff.slot_id, handoff.slot_holder)
        return {"workers_started": report.workers_started, "ms": 1000 * seconds}

    def picks(self, count: int, batch: int = 1) -> dict[str, float]:
        """A worker taking, running and deleting ``count`` queued tasks, ``batch`` per pick."""
        svc = self.services(CAPACITY)
        backlog = None
        picker = svc.worker.picker()
        deletes = PendingDeletes(svc.deps.queues, svc.deps.clock)  # as a worker does: ten per request
        began = time.perf_counter()
        done = 0
        while done < count:
            picked, _ = picker.pick(backlog, False, most=min(batch, count - done))
            if not picked:
                break
            for pick in picked:
                svc.worker.executor.run_one(pick.queue, pick.message, pick.counted, deletes)
                done += 1
            backlog = picked[-1].backlog
        deletes.flush()
        seconds = time.perf_counter() - began
        return {"tasks": done, "tasks_per_s": done / seconds, "ms_per_task": 1000 * seconds / max(1, done)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--depths", default="0,2000,10000")
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    prefix = f"pqh-bench-{uuid.uuid4().hex[:6]}"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        system = start_local_system(
            Path(tmp), PQH_CAPACITY=str(CAPACITY), PQH_TASK_SECONDS="600", PQH_LOCAL_PREFIX=prefix
        )
        try:
            bench = Bench(system, prefix)
            # Warm up first (connections, dynalite's JIT), so depth 0 is not also "cold".
            submit_load(system, WARM_UP)
            filled = WARM_UP
            for depth in depths:
                if depth > filled:
                    began = time.perf_counter()
                    bench.fill(depth - filled)
                    print(f"queued {depth - filled} tasks at levels 4-5 in {time.perf_counter() - began:.1f} s")
                    filled = depth
                row: dict[str, Any] = {"depth": max(depth, filled)}  # what was queued before
                row["submit"] = submit_load(system, args.requests)
                row["hand_off_100"] = bench.hand_off(100)
                row["picks"] = bench.picks(100)
                row["batch_picks"] = bench.picks(100, batch=10)
                rows.append(row)
                print(
                    f"depth {depth}: submit {row['submit']['req_per_s']:.0f} req/s "
                    f"p50 {row['submit']['p50_ms']:.1f} ms p99 {row['submit']['p99_ms']:.1f} ms; "
                    f"hand-off of 100 {row['hand_off_100']['ms']:.0f} ms; "
                    f"picks {row['picks']['tasks_per_s']:.1f} tasks/s, "
                    f"in batches of 10 {row['batch_picks']['tasks_per_s']:.1f} tasks/s",
                    flush=True,
                )
                filled += args.requests  # the submits queued that many more
        finally:
            system.stop()
    print(f"\nmachine: {machine()}; capacity {CAPACITY}, 8 clients, {args.requests} submits per depth")
    print(
        "| queued before | submit req/s | submit p50 | submit p99 | hand-off of 100 slots "
        "| worker picks, one / ten per pick |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        s, h, p, b = row["submit"], row["hand_off_100"], row["picks"], row["batch_picks"]
        print(
            f"| {row['depth']:,} | {s['req_per_s']:.0f} | {s['p50_ms']:.1f} ms | {s['p99_ms']:.1f} ms "
            f"| {h['ms']:.0f} ms ({h['workers_started']} workers) "
            f"| {p['tasks_per_s']:.1f} / {b['tasks_per_s']:.1f} tasks/s |"
        )
    report = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rows": rows}
    print(f"saved {shown(save('deep', report))}")


if __name__ == "__main__":
    main()
