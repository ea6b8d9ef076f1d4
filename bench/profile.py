"""Where a submit's time goes: py-spy on the local runner and on its emulator while 8 clients submit.

Starts the local system, puts 8 clients on POST /task, and samples the Chalice
app's process and moto's server (SQS) with py-spy for a few seconds, counting only
samples that hold the GIL (CPU, not waits); dynalite's CPU is read from /proc.
Prints the functions most often on the stack in each process (by own file) and
saves flame graphs to bench/results/profile-<process>.svg.

    python -m bench.profile [--seconds 15]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.saved import RESULTS
from local.process import start_local_system

BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


def load(base_url: str, stop: threading.Event) -> None:
    session = requests.Session()
    i = 0
    while not stop.is_set():
        session.post(f"{base_url}/task", json={"x": i, "user_id": f"profile-{i % 50}"}, timeout=30)
        i += 1


def summarise(raw: Path, top: int = 12) -> list[tuple[str, float]]:
    """Share of samples in which each module (file) is anywhere on the stack."""
    by_file: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        files = set()
        for frame in stack.split(";"):
            # "function (path/to/file.py:123)"
            if "(" in frame and ".py" in frame:
                path = frame.rsplit("(", 1)[1].split(":", 1)[0]
                parts = Path(path).parts
                if "site-packages" in parts:
                    package = parts[parts.index("site-packages") + 1]
                    files.add(package)
                elif "lib" in parts and "python3.11" in parts:
                    files.add("stdlib:" + Path(path).stem)
                else:
                    files.add(Path(path).name)
        for name in files:
            by_file[name] += count
    return [(name, n / max(1, total)) for name, n in by_file.most_common(top)]


def hottest(raw: Path, top: int = 12) -> list[tuple[str, float]]:
    """Share of samples by innermost frame (where the time is spent itself)."""
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack:
            total += int(count_text)
            leaves[stack.split(";")[-1]] += int(count_text)
    return [(name, n / max(1, total)) for name, n in leaves.most_common(top)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        system = start_local_system(Path(tmp), PQH_CAPACITY="4", PQH_TASK_SECONDS="600")
        try:
            runner = system.process.pid
            # moto's server (SQS) is Python and sampled; dynalite (DynamoDB) is Node.js:
            # only its CPU is read.
            emulator = next(c for c in children(runner) if "local.moto_server" in cmdline(c))
            dynalite = next((c for c in children(runner) if "dynalite" in cmdline(c)), None)
            stop = threading.Event()
            clients = [threading.Thread(target=load, args=(system.base_url, stop), daemon=True) for _ in range(8)]
            for thread in clients:
                thread.start()
            time.sleep(2)
            recorders = {}
            for name, pid in (("runner", runner), ("emulator", emulator)):
                raw = Path(tmp) / f"{name}.txt"
                recorders[name] = (
                    raw,
                    subprocess.Popen(
                        [
                            str(BIN / "py-spy"),
                            "record",
                            "--pid",
                            str(pid),
                            "--duration",
                            str(args.seconds),
                            "--format",
                            "raw",
                            "--output",
                            str(raw),
                            "--nonblocking",
                            "--gil",  # only the thread holding the GIL: CPU, not waiting on sockets
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    ),
                )
                svg = RESULTS / f"profile-{name}.svg"
                recorders[name + "-svg"] = (
                    svg,
                    subprocess.Popen(
                        [
                            str(BIN / "py-spy"),
                            "record",
                            "--pid",
                            str(pid),
                            "--duration",
                            str(args.seconds),
                            "--output",
                            str(svg),
                            "--nonblocking",
                            "--gil",  # only the thread holding the GIL: CPU, not waiting on sockets
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    ),
                )
            pids = {"runner": runner, "emulator": emulator}
            if dynalite is not None:
                pids["dynalite"] = dynalite
            cpu_before = {n: cpu_seconds(pid) for n, pid in pids.items()}
            began = time.monotonic()
            for _, process in recorders.values():
                process.wait()
            wall = time.monotonic() - began
            cpu = {n: (cpu_seconds(pid) - cpu_before[n]) / wall for n, pid in pids.items()}
            stop.set()
        finally:
            system.stop()
        for name in ("runner", "emulator"):
            raw = recorders[name][0]
            print(f"\n{name}: {cpu[name]:.2f} cores busy; share of samples with each module on the stack")
            for module, share in summarise(raw):
                print(f"  {share:6.1%}  {module}")
            print("  innermost frames:")
            for frame, share in hottest(raw):
                print(f"  {share:6.1%}  {frame[:110]}")
        for name in ("runner", "emulator"):
            # py-spy titles the graph with its command line: name files as the repository does.
            svg = recorders[name + "-svg"][0]
            svg.write_text(svg.read_text().replace(f"{RESULTS.parent.parent}/", ""))
        if "dynalite" in cpu:
            print(f"\ndynalite (DynamoDB, Node.js, not sampled): {cpu['dynalite']:.2f} cores busy")
        print("\nflame graphs: bench/results/profile-runner.svg, bench/results/profile-emulator.svg")


if __name__ == "__main__":
    main()
