"""What one AWS call costs on this machine: the client's CPU (botocore) and each emulator's.

Starts dynalite and moto's server (as the local runner does), creates the tables
and queues, and makes each call a task's life needs through the real adapters,
one at a time: wall time, CPU of this process (boto3 building, signing, sending
and parsing the request) and CPU of the emulator process that answered. The sums
give a floor for a submit on this machine: whatever the emulator, the client's
share of a submit's calls is spent in the API process.

    python -m bench.emulator_calls [--calls 300]
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.dispatch import machine
from bench.saved import save, shown
from chalicelib import aws
from chalicelib.adapters.dynamo import DynamoControlStore, DynamoTaskStore, DynamoUsageStore
from chalicelib.adapters.sqs import SqsTaskQueues
from chalicelib.domain import SUCCESS, Task
from infra.provision import provision
from local.emulator import MotoServer, dynamodb_emulator
from local.process import free_port

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def measure(call: Callable[[int], Any], calls: int, server_pid: int) -> dict[str, float]:
    for i in range(20):  # warm up (connections, the emulator's JIT or caches)
        call(-1 - i)
    wall, client, server = time.perf_counter(), time.process_time(), cpu_seconds(server_pid)
    for i in range(calls):
        call(i)
    return {
        "wall_ms": 1000 * (time.perf_counter() - wall) / calls,
        "client_cpu_ms": 1000 * (time.process_time() - client) / calls,
        "server_cpu_ms": 1000 * (cpu_seconds(server_pid) - server) / calls,
    }


def run(kind: str, calls: int, sqs_server: MotoServer) -> list[dict[str, Any]]:
    server = dynamodb_emulator("127.0.0.1", free_port(), kind)
    server.start()
    try:
        os.environ["AWS_ENDPOINT_URL"] = server.url
        os.environ["AWS_ENDPOINT_URL_SQS"] = sqs_server.url
        aws.reset()
        prefix = f"pqh-calls-{uuid.uuid4().hex[:6]}"
        dynamodb, sqs = aws.client("dynamodb"), aws.client("sqs")
        provision(prefix, dynamodb, sqs)
        usage = DynamoUsageStore(dynamodb, f"{prefix}-usage")
        control = DynamoControlStore(dynamodb, f"{prefix}-control")
        tasks = DynamoTaskStore(dynamodb, f"{prefix}-tasks")
        queues = SqsTaskQueues(sqs, lambda level: f"{prefix}-level-{level}")
        ids = {i: str(uuid.uuid4()) for i in range(-20, calls)}
        now = time.time()

        def task(i: int) -> Task:
            return Task(
                task_id=ids[i],
                user_id=f"user{i % 20}",
                x={"n": i},
                priority_level=3,
                submitted_at=now,
                expires_at=int(now) + 3600,
                tag=1.0,
            )

        sqs_pid, dynamo_pid = sqs_server.pid, server.pid
        steps: list[tuple[str, str, Callable[[int], Any], int]] = [
            (
                "submit",
                "usage UpdateItem (count, window back)",
                lambda i: usage.record_submission(f"user{i % 20}", now, 600, 6000),
                dynamo_pid,
            ),
            ("submit", "backlog UpdateItem (count, number)", lambda i: control.enqueue(3), dynamo_pid),
            ("submit", "task PutItem", lambda i: tasks.create(task(i)), dynamo_pid),
            ("submit", "SQS SendMessage", lambda i: queues.send(3, task(i)), sqs_pid),
            ("worker", "task UpdateItem (start)", lambda i: tasks.start(ids[i], "run", now, now + 900), dynamo_pid),
            (
                "worker",
                "task UpdateItem (outcome)",
                lambda i: tasks.finish(ids[i], "run", SUCCESS, now, now + 3600, result=i),
                dynamo_pid,
            ),
            ("result", "task GetItem", lambda i: tasks.get(ids[i]), dynamo_pid),
        ]
        rows = []
        for phase, name, call, pid in steps:
            if pid == sqs_pid and kind != "dynalite":
                continue  # SQS is on the same moto server in both runs: measured once
            rows.append(
                {
                    "emulator": kind if pid == dynamo_pid else "moto (SQS)",
                    "phase": phase,
                    "call": name,
                    **measure(call, calls, pid),
                }
            )
        return rows
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    sqs_server = MotoServer("127.0.0.1", free_port())
    sqs_server.start()
    try:
        rows = run("dynalite", args.calls, sqs_server) + run("moto", args.calls, sqs_server)
    finally:
        sqs_server.stop()
    print(f"machine: {machine()}; {args.calls} calls each, one at a time")
    print("| call | emulator | wall | client CPU (botocore) | emulator CPU |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['phase']}: {r['call']} | {r['emulator']} | {r['wall_ms']:.2f} ms | "
            f"{r['client_cpu_ms']:.2f} ms | {r['server_cpu_ms']:.2f} ms |"
        )
    submit = [r for r in rows if r["phase"] == "submit" and r["emulator"] in ("dynalite", "moto (SQS)")]
    client = sum(r["client_cpu_ms"] for r in submit)
    total = client + sum(r["server_cpu_ms"] for r in submit)
    print(
        f"a submit's four calls: {client:.2f} ms of client CPU (at most {1000 / client:.0f} submits/s for one "
        f"API process), {total:.2f} ms with the emulators' share (at most {2000 / total:.0f}/s on two cores, "
        "before any HTTP serving or load client)"
    )
    report = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rows": rows}
    print(f"saved {shown(save('emulator-calls', report))}")


if __name__ == "__main__":
    main()
