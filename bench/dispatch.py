"""Benchmark the local system: idle start delay and capacity utilisation under a backlog (cold, then warm).

Runs `python -m local.run` as a real process (embedded moto server), drives it
over HTTP, and reads the server's own timestamps from /result. Prints a table
and writes bench/results/dispatch-<time>.json.

    python -m bench.dispatch [--idle 20] [--tasks 400 --users 20 --capacity 4 --task-seconds 0.1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.saved import save, shown
from local.process import LocalSystem, start_local_system


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def idle_start_delay(system: LocalSystem, samples: int) -> dict[str, float]:
    """Submit one task at a time to an idle system: how long until it starts?"""
    delays = []
    for i in range(samples):
        task = system.submit(f"idle_{i}", i)
        (done,) = system.wait_all([task["task_id"]], timeout=60)
        delays.append(done["started_at"] - done["submitted_at"])
    return {
        "samples": samples,
        "p50_ms": 1000 * percentile(delays, 50),
        "p99_ms": 1000 * percentile(delays, 99),
        "max_ms": 1000 * max(delays),
    }


def utilisation(system: LocalSystem, tasks: int, users: int, capacity: int, task_seconds: float) -> dict[str, float]:
    """C slots, many short tasks from many users, submitted as fast as 8 clients can."""
    jobs = [(f"user_{i % users}", i) for i in range(tasks)]

    def submit(job: tuple[str, int]) -> dict[str, Any]:
        return system.submit(*job)

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        submitted = list(pool.map(submit, jobs))
    submit_phase = time.monotonic() - began
    done = system.wait_all([t["task_id"] for t in submitted], timeout=600)
    first_submit = min(t["submitted_at"] for t in done)
    first_start = min(t["started_at"] for t in done)
    last_finish = max(t["finished_at"] for t in done)
    run_times = [t["finished_at"] - t["started_at"] for t in done]
    busy = sum(run_times)
    ideal = tasks * task_seconds / capacity
    return {
        "tasks": tasks,
        "users": users,
        "capacity": capacity,
        "task_seconds": task_seconds,
        "ideal_makespan_s": ideal,
        "makespan_from_first_submit_s": last_finish - first_submit,
        "makespan_from_first_start_s": last_finish - first_start,
        "utilisation": ideal / (last_finish - first_submit),
        "utilisation_from_first_start": ideal / (last_finish - first_start),
        "slot_busy_fraction": busy / (capacity * (last_finish - first_start)),
        "mean_run_s": statistics.mean(run_times),
        "submit_phase_s": submit_phase,
        "failed": sum(1 for t in done if t["task_status"] != "SUCCESS"),
    }


def machine() -> str:
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=int, default=20, help="idle start samples")
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--capacity", type=int, default=4)
    parser.add_argument("--task-seconds", type=float, default=0.1)
    parser.add_argument("--policy", default="fair", help="PQH_POLICY for the run")
    args = parser.parse_args()

    report: dict[str, Any] = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "policy": args.policy,
    }
    run_env = {"PQH_POLICY": args.policy}
    with tempfile.TemporaryDirectory() as tmp:
        system = start_local_system(Path(tmp), PQH_CAPACITY="1", PQH_TASK_SECONDS="0.05", **run_env)
        try:
            report["idle_start"] = idle_start_delay(system, args.idle)
        finally:
            system.stop()
        system = start_local_system(
            Path(tmp), PQH_CAPACITY=str(args.capacity), PQH_TASK_SECONDS=str(args.task_seconds), **run_env
        )
        try:
            report["utilisation"] = utilisation(system, args.tasks, args.users, args.capacity, args.task_seconds)
            # The same again on the now warm system (processes, connections, and the
            # run-time average the workers size their batches by): a service that
            # has been up for a while.
            report["utilisation_warm"] = utilisation(system, args.tasks, args.users, args.capacity, args.task_seconds)
        finally:
            system.stop()

    idle, util = report["idle_start"], report["utilisation"]
    print(f"machine: {report['machine']}; policy {args.policy}")
    print("| measure | value |")
    print("|---|---|")
    print(
        f"| idle start delay p50 / p99 / max | {idle['p50_ms']:.0f} / {idle['p99_ms']:.0f} / {idle['max_ms']:.0f} ms |"
    )
    print(
        f"| utilisation, C={util['capacity']}, {util['task_seconds']} s tasks, {util['tasks']} tasks "
        f"from {util['users']} users (ideal / makespan from first submit) | {util['utilisation']:.3f} |"
    )
    print(f"| same, makespan from first start | {util['utilisation_from_first_start']:.3f} |")
    warm = report["utilisation_warm"]
    print(f"| same again on the warm system (ideal / makespan from first submit) | {warm['utilisation']:.3f} |")
    print(f"| slot busy fraction (sum of run times / C x makespan) | {util['slot_busy_fraction']:.3f} |")
    print(f"| makespan (ideal {util['ideal_makespan_s']:.1f} s) | {util['makespan_from_first_submit_s']:.2f} s |")
    print(f"| time to submit all {util['tasks']} tasks (8 clients) | {util['submit_phase_s']:.2f} s |")
    print(f"saved {shown(save('dispatch', report))}")


if __name__ == "__main__":
    main()
