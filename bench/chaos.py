"""`make chaos`: submit N tasks while injecting every fault, then account for each task.

Prints the figures docs/operating.md quotes (submitted, succeeded, failed with reasons,
lost, run twice) and saves them to bench/results/chaos-latest.json (each run also
under bench/results/runs/). The run fails (exit 1) if a task was lost or run twice.

    python -m bench.chaos --tasks 300
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import asdict

from bench.saved import save, shown
from local.chaos import ChaosConfig, run_chaos


def main(argv: list[str] | None = None) -> int:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--capacity", type=int, default=defaults.capacity)
    parser.add_argument("--poison", type=float, default=defaults.poison_share, help="share of poison tasks")
    parser.add_argument("--kill", type=float, default=defaults.kill_rate, help="worker death rate per kill point")
    parser.add_argument("--dispatcher-death", type=float, default=defaults.dispatcher_death_rate)
    parser.add_argument(
        "--throttle", type=float, default=defaults.throttle_rate, help="share of AWS requests answered 503"
    )
    parser.add_argument(
        "--duplicate", type=float, default=defaults.duplicate_rate, help="share of receives delivered twice"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    config = ChaosConfig(
        tasks=args.tasks,
        capacity=args.capacity,
        poison_share=args.poison,
        kill_rate=args.kill,
        dispatcher_death_rate=args.dispatcher_death,
        throttle_rate=args.throttle,
        duplicate_rate=args.duplicate,
        seed=args.seed,
        timeout_seconds=600,
    )
    print(f"chaos: {config.tasks} tasks, capacity {config.capacity}, faults {asdict(config)}", flush=True)
    report = run_chaos(config)
    figures = report.as_dict()
    rows = [
        ("submitted", figures["submitted"]),
        ("  submits refused with 503 and retried", figures["submit_errors"]),
        ("succeeded", figures["succeeded"]),
        ("failed", figures["failed"]),
        *((f"  reason: {reason}", n) for reason, n in sorted(figures["failure_reasons"].items())),
        ("lost (must be 0)", figures["lost"]),
        ("run twice (must be 0)", figures["run_twice"]),
        ("poison not in a dead-letter queue (must be 0)", figures["poison_not_dead_lettered"]),
        ("slots held after their lease (must be 0)", figures["slots_held_after_lease"]),
        *((f"injected: {kind}", n) for kind, n in sorted(figures["injected"].items())),
        ("seconds", figures["seconds"]),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    saved = {
        "config": asdict(config),
        "figures": figures,
        "machine": f"{platform.machine()} {platform.processor() or ''} Python {platform.python_version()}".strip(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"saved {shown(save('chaos', saved))}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
