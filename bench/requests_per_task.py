"""AWS requests per task, counted by operation with botocore event hooks, and what they cost.

Runs the real handlers (chalice.test.Client) under moto: N tasks from U users are
submitted over the API, the dispatcher and workers run them, and each result is
read once. Every DynamoDB and SQS call is counted by a botocore `before-call`
hook; Lambda invocations by the invoker. Prints a table and the cost per million
tasks at the public on-demand prices listed below.

    python -m bench.requests_per_task [--tasks 200 --users 20 --capacity 4] [--backlog-only] [--by-path]

``--by-path`` also counts each DynamoDB and SQS call by the code that made it (the
innermost three functions of chalicelib outside the adapters), and how many tasks
each pick took from each queue. The policy and the sample come from the
environment as usual (PQH_POLICY, PQH_FAIR_SAMPLE).
"""

from __future__ import annotations

import argparse
import json
import os
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

# Public on-demand prices, us-east-1, as published by AWS (checked for this
# project in 2026; verify before relying on them).
PRICES = {
    "API Gateway REST request": 3.50 / 1e6,
    "Lambda request": 0.20 / 1e6,
    "Lambda GB-second": 0.0000166667,
    "DynamoDB write request unit": 0.625 / 1e6,
    "DynamoDB read request unit": 0.125 / 1e6,
    "SQS request": 0.40 / 1e6,
}
# Overhead functions only (the task itself is the service being shared): about
# 60 ms at 256 MB per dispatcher run, and per worker start, outside the task.
OVERHEAD_GB_SECONDS = 0.06 * 0.25

WRITES = {"PutItem", "UpdateItem", "DeleteItem"}
READS = {"GetItem", "Query", "BatchGetItem"}


def run_invocations(client: Any, invoker: Any, lambda_calls: Counter[str]) -> None:
    """Run the pending asynchronous invocations (dispatcher, workers) until none are left."""
    while invoker.dispatch_triggers or invoker.handoffs:
        if invoker.dispatch_triggers:
            invoker.dispatch_triggers -= 1
            lambda_calls["dispatcher"] += 1
            client.lambda_.invoke("dispatcher", {})
        for handoff in invoker.take_handoffs():
            lambda_calls["worker"] += 1
            client.lambda_.invoke("worker", handoff.to_payload())


def code_path() -> str:
    """The innermost three chalicelib functions on the stack, outside the adapters: who made this call."""
    names = [
        frame.name
        for frame in traceback.extract_stack()
        if "chalicelib" in frame.filename and "adapters" not in frame.filename and not frame.filename.endswith("aws.py")
    ]
    return " > ".join(names[-3:]) or "(outside chalicelib)"


def run(tasks: int, users: int, capacity: int, backlog: bool, by_path: bool = False) -> dict[str, Any]:
    from chalice.test import Client
    from moto import mock_aws

    from app import app
    from chalicelib import aws, wiring
    from chalicelib.adapters.memory import RecordingInvoker
    from chalicelib.worker.picking import Picker
    from infra.provision import provision
    from local.moto_patches import atomic_writes

    config = json.loads((Path(__file__).resolve().parent.parent / ".chalice" / "config.json").read_text())
    os.environ.update(config["stages"]["dev"]["environment_variables"])
    # No-auth mode: with API keys, API Gateway caches the authorizer's answer (one
    # GetItem) for 60 s per key, so it adds next to nothing per task.
    os.environ.update(PQH_TASK_SECONDS="0", PQH_CAPACITY=str(capacity), PQH_AUTH="none")
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"  # EMF blobs would fill the terminal; they are printed, not sent
    for key in [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL")]:
        del os.environ[key]
    os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1")
    atomic_writes()
    calls: Counter[str] = Counter()
    paths: Counter[tuple[str, str]] = Counter()
    picks: Counter[tuple[int, int]] = Counter()  # (queue, tasks taken) of each pick's receive
    lambda_calls: Counter[str] = Counter()

    def count(model: Any, **kw: Any) -> None:
        operation = f"{model.service_model.service_name}:{model.name}"
        calls.update([operation])
        if by_path:
            paths.update([(operation, code_path())])

    receive_for = Picker._receive_for

    def counting_receive_for(self: Any, level: int, n: int, sample: int) -> Any:
        picks.update([(level, n)])
        return receive_for(self, level, n, sample)

    with mock_aws():
        provision("pqh-dev", aws.client("dynamodb"), aws.client("sqs"))
        invoker = RecordingInvoker()
        wiring.configure(invoker_factory=lambda settings: invoker)
        for service in ("dynamodb", "sqs"):
            aws.client(service).meta.events.register("before-call.*.*", count)
        aws.client("sqs").get_queue_url(QueueName="pqh-dev-level-0")  # warm-up, not counted below
        calls.clear()
        paths.clear()
        Picker._receive_for = counting_receive_for  # type: ignore[method-assign]
        # A stage the config does not name: the client then leaves the environment as set above.
        with Client(app, stage_name="bench") as client:
            ids = []
            api_requests = 0
            for i in range(tasks):
                response = client.http.post(
                    "/task",
                    headers={"Content-Type": "application/json"},
                    body=json.dumps({"x": i, "user_id": f"user{i % users}"}),
                )
                api_requests += 1
                ids.append(response.json_body["task_id"])
                # Idle: each submit's dispatcher invocation and the worker it starts
                # run at once. Backlog: everything is submitted first.
                if not backlog:
                    run_invocations(client, invoker, lambda_calls)
            run_invocations(client, invoker, lambda_calls)
            for task_id in ids:
                assert client.http.get(f"/result/{task_id}").json_body["task_status"] == "SUCCESS"
                api_requests += 1
        Picker._receive_for = receive_for  # type: ignore[method-assign]
    return {"calls": calls, "paths": paths, "picks": picks, "lambda": lambda_calls, "api": api_requests, "tasks": tasks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--capacity", type=int, default=4)
    parser.add_argument("--backlog-only", action="store_true", help="skip the idle run")
    parser.add_argument("--by-path", action="store_true", help="also count calls by the code that made them")
    args = parser.parse_args()
    for backlog in (True,) if args.backlog_only else (False, True):
        report(run(args.tasks, args.users, args.capacity, backlog, args.by_path), args, backlog)
    print(
        "prices used (per million): API Gateway REST requests $3.50; Lambda requests $0.20; Lambda GB-seconds "
        "$16.67; DynamoDB on-demand write units $0.625, read units $0.125; SQS requests $0.40"
    )


def report(result: dict[str, Any], args: argparse.Namespace, backlog: bool) -> None:
    n = result["tasks"]
    calls: Counter[str] = result["calls"]
    scenario = "all submitted first (a backlog)" if backlog else "each runs as it arrives (an idle system)"
    print(f"\n{n} tasks from {args.users} users, capacity {args.capacity}, {scenario}; each result read once")
    print("| operation | per task |")
    print("|---|---:|")
    for op, count in sorted(calls.items()):
        print(f"| {op} | {count / n:.2f} |")
    for name, count in sorted(result["lambda"].items()):
        print(f"| lambda:Invoke {name} | {count / n:.2f} |")
    print(f"| API Gateway requests | {result['api'] / n:.2f} |")
    aws_requests = sum(calls.values()) + sum(result["lambda"].values())
    print(f"| **AWS requests (DynamoDB + SQS + Lambda)** | **{aws_requests / n:.2f}** |")
    writes = sum(c for op, c in calls.items() if op.split(":")[1] in WRITES)
    reads = sum(c for op, c in calls.items() if op.split(":")[1] in READS)
    sqs = sum(c for op, c in calls.items() if op.startswith("sqs:"))
    invokes = sum(result["lambda"].values()) + result["api"]  # API handler invocations too
    cost = (
        result["api"] * PRICES["API Gateway REST request"]
        + invokes * (PRICES["Lambda request"] + OVERHEAD_GB_SECONDS * PRICES["Lambda GB-second"])
        + writes * PRICES["DynamoDB write request unit"]
        + reads * PRICES["DynamoDB read request unit"]
        + sqs * PRICES["SQS request"]
    ) / n
    print(f"cost per million tasks, excluding the tasks' own run time: ${cost * 1e6:,.2f}")
    if args.by_path:
        print("\n| operation | per task | made by |")
        print("|---|---:|---|")
        for (op, path), count in sorted(result["paths"].items(), key=lambda item: (item[0][0], -item[1])):
            print(f"| {op} | {count / n:.3f} | {path} |")
        print("\n| queue | tasks taken by the pick | picks |")
        print("|---:|---:|---:|")
        for (queue, taken), count in sorted(result["picks"].items()):
            print(f"| {queue} | {taken} | {count} |")


if __name__ == "__main__":
    main()
