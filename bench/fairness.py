"""Fairness benchmark: named workloads through the real local system, under each policy.

For each policy (fifo, strict, fair, priority) it starts `python -m local.run` with
capacity 1 and short tasks, plays five workloads against it over HTTP, reads every
task's server-side times from /result, and reports per workload:

- wait (start - submit) p50 / p95 / max per user class;
- Jain's fairness index over the backlogged users' weight-normalised service;
- the heavy user's share of capacity while others were waiting;
- utilisation (busy time / makespan);
- priority inversions: tasks started while a task of a higher level (lower
  number) had been waiting since before;
- the floor: the smallest fraction of the starts a level got in a window of 64
  consecutive starts throughout which it had a task waiting;
- the longest time a user with a task waiting went without a start;
- the burst: tasks of the burst started while a light user's task was waiting.

Then a summary per policy against the targets (light and visitor waits within
10% or 0.2 s of strict's, at least 1/32 of every 64 starts, Jain >= 0.95 for the
weighted users, at most 5 burst tasks ahead, ETA error p90 under the sustained
light load). It writes the tables (fairness-latest.md, fairness-latest.json) and
PNG plots (start timelines, wait distributions) to bench/results/.

    python -m bench.fairness [--task-seconds 0.2] [--policies fifo,strict,fair,priority]
                             [--workloads sustained,burst] [--quick] [--repeat 2]

``--workloads`` runs only the workloads whose names contain one of the given
words; ``--repeat`` plays them that many times, the policies taking turns round
by round (the spread between runs); ``--quick`` is the sustained light load alone
under strict and priority (about 40 s per policy and round). A partial run
prints its tables and leaves the committed results and plots alone.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.dispatch import machine, percentile
from local.process import LocalSystem, start_local_system

RESULTS = Path(__file__).resolve().parent / "results"
ADMIN_TOKEN = "bench-admin-token"


@dataclass
class Run:
    """What one workload submitted: (user, class, task id) in submission order."""

    name: str
    tasks: list[tuple[str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    weights: dict[str, int] = field(default_factory=dict)
    predicted: dict[str, float] = field(default_factory=dict)  # task id -> eta_seconds when submitted
    # (task id, wall-clock time read, eta_seconds) read while the task waited, by the sampler.
    samples: list[tuple[str, float, float]] = field(default_factory=list)

    def submit(self, system: LocalSystem, user: str, klass: str, x: Any = None) -> str:
        task_id = str(system.submit(user, x)["task_id"])
        # Ask at once where it is and when it will start: checked against the real start later.
        body = system.result(task_id)
        with self.lock:
            self.tasks.append((user, klass, task_id))
            if "eta_seconds" in body:
                self.predicted[task_id] = float(body["eta_seconds"])
        return task_id


def sample_etas(system: LocalSystem, run: Run, stop: threading.Event, seed: int) -> None:
    """Every half second, read the ETA of a few tasks still queued: what a user polling sees while waiting."""
    rng = random.Random(seed)
    while not stop.wait(0.5):
        with run.lock:
            ids = [task_id for _, _, task_id in run.tasks]
        for task_id in rng.sample(ids, min(3, len(ids))):
            body = system.result(task_id)
            if body["task_status"] == "PENDING" and "eta_seconds" in body:
                with run.lock:
                    run.samples.append((task_id, time.time(), float(body["eta_seconds"])))


def at(start: float, offset: float) -> None:
    delay = start + offset - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def in_threads(*jobs: Callable[[], None]) -> None:
    threads = [threading.Thread(target=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# --- Workloads: T is the task time; capacity is 1 ----------------------------


def noisy_neighbour(system: LocalSystem, tag: str, t: float, run: Run) -> Run:
    """A heavy user's burst of 40, then five light users with one task each."""
    run.name = "noisy-neighbour burst"
    for i in range(40):
        run.submit(system, f"{tag}-heavy", "heavy", i)
    time.sleep(5 * t)

    def light(i: int) -> Callable[[], None]:
        def job() -> None:
            run.submit(system, f"{tag}-light{i}", "light", i)

        return job

    in_threads(*[light(i) for i in range(5)])
    return run


def sustained_light(system: LocalSystem, tag: str, t: float, run: Run) -> Run:
    """A heavy backlog of 60; five light users together offer 1.25x capacity for 50 task times."""
    run.name = "sustained light load on a heavy backlog"
    for i in range(60):
        run.submit(system, f"{tag}-heavy", "heavy", i)
    start = time.monotonic()
    period = 5 * t / 1.25  # each light user submits every 4 task times

    def light(i: int) -> Callable[[], None]:
        def job() -> None:
            for k in range(int(50 * t / period)):
                at(start, i * period / 5 + k * period)
                run.submit(system, f"{tag}-light{i}", "light", k)

        return job

    in_threads(*[light(i) for i in range(5)])
    return run


def weighted(system: LocalSystem, tag: str, t: float, run: Run) -> Run:
    """Three users of weights 1, 2 and 4, each keeping 3 tasks queued for 120 task times."""
    run.name = "weighted users (1, 2, 4)"
    weights = {f"{tag}-w1": 1, f"{tag}-w2": 2, f"{tag}-w4": 4}
    run.weights = weights
    for user, weight in weights.items():
        response = system.http.put(
            f"{system.base_url}/admin/users/{user}/weight",
            json={"weight": weight},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=10,
        )
        response.raise_for_status()
    deadline = time.monotonic() + 120 * t

    def user_loop(user: str) -> Callable[[], None]:
        def job() -> None:
            outstanding = [run.submit(system, user, user.rsplit("-", 1)[1]) for _ in range(3)]
            while time.monotonic() < deadline:
                body = system.result(outstanding[0])
                if body["task_status"] in ("SUCCESS", "FAILURE"):
                    outstanding.pop(0)
                    outstanding.append(run.submit(system, user, user.rsplit("-", 1)[1]))
                else:
                    time.sleep(t / 4)

        return job

    in_threads(*[user_loop(user) for user in weights])
    return run


def comes_and_goes(system: LocalSystem, tag: str, t: float, run: Run) -> Run:
    """A heavy backlog of 60; one user sends 5 tasks, leaves, and comes back twice."""
    run.name = "a user who comes and goes"
    for i in range(60):
        run.submit(system, f"{tag}-heavy", "heavy", i)
    start = time.monotonic()
    for visit in range(3):
        at(start, visit * 20 * t)
        for k in range(5):
            run.submit(system, f"{tag}-visitor", "visitor", k)
    return run


def burst_then_light(system: LocalSystem, tag: str, t: float, run: Run) -> Run:
    """One user's burst of 30, then five light users with one task each, at once."""
    run.name = "burst of 30, then five light users"
    for i in range(30):
        run.submit(system, f"{tag}-burst", "burst", i)
    time.sleep(2 * t)

    def light(i: int) -> Callable[[], None]:
        def job() -> None:
            run.submit(system, f"{tag}-light{i}", "light", i)

        return job

    in_threads(*[light(i) for i in range(5)])
    return run


WORKLOADS = [noisy_neighbour, sustained_light, weighted, comes_and_goes, burst_then_light]
# Starts per window for the floor: the target is at least 1/32 of every 64.
WINDOW = 64


def floor_fraction(rows: list[dict[str, Any]]) -> float | None:
    """The least share of a window's starts a level got while it had a task waiting throughout the window."""
    starts = sorted(rows, key=lambda r: r["started_at"])
    least: float | None = None
    for first in range(len(starts) - WINDOW + 1):
        window = starts[first : first + WINDOW]
        for level in {r["priority_level"] for r in rows}:
            mine = [r for r in rows if r["priority_level"] == level]
            backlogged = all(any(r["submitted_at"] < w["started_at"] <= r["started_at"] for r in mine) for w in window)
            if backlogged:
                share = sum(1 for w in window if w["priority_level"] == level) / WINDOW
                least = share if least is None else min(least, share)
    return least


def longest_starved(rows: list[dict[str, Any]]) -> float:
    """The longest a user had a task waiting without any of its tasks starting."""
    longest = 0.0
    for user in {r["user"] for r in rows}:
        mine = sorted((r for r in rows if r["user"] == user), key=lambda r: r["started_at"])
        previous = float("-inf")
        for k, row in enumerate(mine):
            # Waiting since the later of its previous start and the first submit still waiting.
            since = max(previous, min(r["submitted_at"] for r in mine[k:]))
            longest = max(longest, row["started_at"] - since)
            previous = row["started_at"]
    return longest


def burst_ahead(rows: list[dict[str, Any]]) -> int | None:
    """Tasks of the burst started while a light user's task was waiting."""
    light = [r for r in rows if r["class"] == "light"]
    burst = [r for r in rows if r["class"] == "burst"]
    if not light or not burst:
        return None
    return sum(1 for b in burst if any(r["submitted_at"] < b["started_at"] < r["started_at"] for r in light))


# --- Metrics ------------------------------------------------------------------


def others_ahead(rows: list[dict[str, Any]], klass: str) -> int:
    """Tasks of other classes started while a task of ``klass`` was waiting.

    The policy's doing, in starts: unlike a wait in seconds, it does not move with
    the machine's speed (on a loaded machine the time per start varies by 10-20%
    between runs, and under an overload the light users' queue, so their waits,
    grows with it).
    """
    mine = [r for r in rows if r["class"] == klass]
    return sum(
        1
        for o in rows
        if o["class"] != klass and any(r["submitted_at"] < o["started_at"] < r["started_at"] for r in mine)
    )


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if values and any(values) else float("nan")


def analyse(run: Run, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = [{**results[task_id], "user": user, "class": klass} for user, klass, task_id in run.tasks]
    for row in rows:
        row["wait"] = row["started_at"] - row["submitted_at"]
    first = min(r["submitted_at"] for r in rows)
    last = max(r["finished_at"] for r in rows)
    busy = sum(r["finished_at"] - r["started_at"] for r in rows)
    waits: dict[str, dict[str, float]] = {}
    for klass in sorted({r["class"] for r in rows}):
        values = [r["wait"] for r in rows if r["class"] == klass]
        waits[klass] = {"p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values)}
    # The contended period: while more than one user had a task waiting.
    contended_end = (
        max(r["started_at"] for r in rows if r["class"] != "heavy")
        if any(r["class"] != "heavy" for r in rows)
        else last
    )
    in_window = [r for r in rows if r["started_at"] <= contended_end]
    service: dict[str, float] = {}
    for r in in_window:
        service[r["user"]] = service.get(r["user"], 0.0) + (r["finished_at"] - r["started_at"])
    total = sum(service.values()) or 1.0
    heavy_share = sum(v for u, v in service.items() if u.endswith("-heavy")) / total
    weights = run.weights or {}
    normalised = [service[u] / weights.get(u, 1) for u in service]
    inversions = 0
    for r in rows:
        waiting_higher = [
            o
            for o in rows
            if o["priority_level"] < r["priority_level"] and o["submitted_at"] < r["started_at"] < o["started_at"]
        ]
        inversions += bool(waiting_higher)
    errors = [
        abs((r["started_at"] - r["submitted_at"]) - run.predicted[task_id])
        for (_, _, task_id), r in zip(run.tasks, rows, strict=True)
        if task_id in run.predicted
    ]
    eta_by_class = {}
    for klass in sorted({r["class"] for r in rows}):
        mine = [
            abs(r["wait"] - run.predicted[task_id])
            for (_, _, task_id), r in zip(run.tasks, rows, strict=True)
            if task_id in run.predicted and r["class"] == klass
        ]
        eta_by_class[klass] = percentile(mine, 90) if mine else None
    by_id = {task_id: r for (_, _, task_id), r in zip(run.tasks, rows, strict=True)}
    for task_id, r in by_id.items():
        r["eta_at_submit"] = run.predicted.get(task_id)
        r["etas_waiting"] = [(read_at, eta) for i, read_at, eta in run.samples if i == task_id]
    sampled = sorted(abs((by_id[i]["started_at"] - read_at) - eta) for i, read_at, eta in run.samples if i in by_id)
    return {
        "workload": run.name,
        "tasks": len(rows),
        "eta_error_p90_waiting": percentile(sampled, 90) if sampled else None,
        "eta_samples": len(sampled),
        "others_ahead_of_light": others_ahead(rows, "light"),
        "seconds_per_start": (max(r["started_at"] for r in rows) - min(r["started_at"] for r in rows))
        / max(1, len(rows) - 1),
        "eta_error_p90_by_class": eta_by_class,
        "floor_64": floor_fraction(rows),
        "longest_starved": longest_starved(rows),
        "burst_ahead": burst_ahead(rows),
        "eta_error_p50": percentile(errors, 50) if errors else None,
        "eta_error_p90": percentile(errors, 90) if errors else None,
        "waits": waits,
        "jain": jain(normalised),
        "heavy_share": heavy_share if any(u.endswith("-heavy") for u in service) else None,
        "service_by_user": {u.rsplit("-", 1)[1]: round(v / total, 3) for u, v in sorted(service.items())},
        "utilisation": busy / (last - first),
        "inversions": inversions,
        "rows": rows,
    }


def plot(policy: str, analyses: list[dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(analyses), figsize=(5 * len(analyses), 7), squeeze=False)
    for col, analysis in enumerate(analyses):
        rows = analysis["rows"]
        t0 = min(r["submitted_at"] for r in rows)
        users = sorted({r["user"] for r in rows})
        ax = axes[0][col]
        for y, user in enumerate(users):
            mine = [r for r in rows if r["user"] == user]
            ax.scatter([r["started_at"] - t0 for r in mine], [y] * len(mine), s=8, label=user.rsplit("-", 1)[1])
        ax.set_yticks(range(len(users)), [u.rsplit("-", 1)[1] for u in users], fontsize=7)
        ax.set_title(f"{analysis['workload']}\n({policy}) task starts", fontsize=9)
        ax.set_xlabel("seconds since first submit", fontsize=8)
        ax = axes[1][col]
        classes = sorted(analysis["waits"])
        ax.boxplot([[r["wait"] for r in rows if r["class"] == c] for c in classes], tick_labels=classes)
        ax.set_ylabel("wait (s)", fontsize=8)
        ax.set_title("wait by user class", fontsize=9)
    fig.tight_layout()
    path = out / f"fairness-{policy}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def run_policy(
    policy: str, task_seconds: float, tmp: Path, workloads: list[Callable[..., Run]] | None = None
) -> list[dict[str, Any]]:
    system = start_local_system(
        tmp,
        PQH_CAPACITY="1",
        PQH_TASK_SECONDS=str(task_seconds),
        PQH_POLICY=policy,
        PQH_ADMIN_TOKEN=ADMIN_TOKEN,
    )
    analyses = []
    try:
        for index, workload in enumerate(workloads or WORKLOADS):
            run = Run(workload.__name__)
            stop = threading.Event()
            sampler = threading.Thread(target=sample_etas, args=(system, run, stop, index))
            sampler.start()
            try:
                workload(system, f"{policy}{index}-{uuid.uuid4().hex[:6]}", task_seconds, run)
                ids = [task_id for _, _, task_id in run.tasks]
                done = system.wait_all(ids, timeout=600)
            finally:
                stop.set()
                sampler.join()
            analyses.append(analyse(run, dict(zip(ids, done, strict=True))))
            print(f"  {policy}: {run.name}: {len(ids)} tasks", flush=True)
    finally:
        system.stop()
    return analyses


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(by_policy: dict[str, list[dict[str, Any]]]) -> str:
    rounds = len(next(iter(by_policy.values())))
    lines = [
        "| workload | policy | wait p50 / p95 / max (s) by class | Jain | heavy share | utilisation | inversions "
        "| floor (least of 64) | longest starved (s) | ETA error p50 / p90 (s) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for index in range(rounds):
        for policy, analyses in by_policy.items():
            a = analyses[index]
            waits = "; ".join(
                f"{k} {v['p50']:.1f} / {v['p95']:.1f} / {v['max']:.1f}" for k, v in sorted(a["waits"].items())
            )
            lines.append(
                f"| {a['workload']} | {policy} | {waits} | {fmt(a['jain'])} | {fmt(a['heavy_share'])} "
                f"| {a['utilisation']:.2f} | {a['inversions']} "
                f"| {fmt(a['floor_64'], 3)} | {a['longest_starved']:.1f} "
                f"| {fmt(a['eta_error_p50'], 1)} / {fmt(a['eta_error_p90'], 1)} |"
            )
    return "\n".join(lines)


def _by_name(analyses: list[dict[str, Any]], fragment: str) -> dict[str, Any] | None:
    return next((a for a in analyses if fragment in a["workload"]), None)


def light_within_strict(analyses: list[dict[str, Any]], strict: list[dict[str, Any]]) -> tuple[float, bool]:
    """The worst light or visitor wait over strict's (p50 and p95, every workload), and whether all are within target.

    Within target: at most 10% above strict's, or 0.2 s, whichever is larger.
    """
    worst, ok = 0.0, True
    for mine, theirs in zip(analyses, strict, strict=True):
        for klass in ("light", "visitor"):
            if klass not in mine["waits"]:
                continue
            for q in ("p50", "p95"):
                value, reference = mine["waits"][klass][q], theirs["waits"][klass][q]
                worst = max(worst, value - reference)
                ok = ok and value <= reference + max(0.1 * reference, 0.2)
    return worst, ok


def summary(by_policy: dict[str, list[dict[str, Any]]], rounds: int = 1) -> str:
    """One row per policy (and per round, when the workloads were played more than once): the targets."""
    lines = [
        "| policy | light/visitor p50 / p95 vs strict: worst excess (s) | floor: least of 64 starts "
        "| longest starved (s) | Jain (weights 1, 2, 4) | burst tasks ahead of a light task "
        "| ETA error p90, sustained light (s): all / heavy / light | ETA error p90 while waiting, sustained light (s) "
        "| sustained light: other starts while a light task waited; s per start |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in range(rounds):
        of_round = {policy: _round(analyses, r, rounds) for policy, analyses in by_policy.items()}
        strict = of_round.get("strict")
        for policy, analyses in of_round.items():
            if strict is None:
                versus = "-"
            else:
                worst, ok = light_within_strict(analyses, strict)
                versus = f"{worst:+.2f} ({'within' if ok else 'outside'} target)"
            sustained = _by_name(analyses, "sustained")
            weighted_run = _by_name(analyses, "weighted")
            burst = _by_name(analyses, "burst of 30")
            floors = [a["floor_64"] for a in analyses if a["floor_64"] is not None]
            floor = min(floors) if floors else None
            eta = "-"
            if sustained is not None:
                by_class = sustained["eta_error_p90_by_class"]
                eta = " / ".join(
                    fmt(v, 1) for v in (sustained["eta_error_p90"], by_class.get("heavy"), by_class.get("light"))
                )
            label = policy if rounds == 1 else f"{policy} (round {r + 1})"
            lines.append(
                f"| {label} | {versus} | {fmt(floor, 3)} ({fmt(floor * WINDOW if floor is not None else None, 0)}/64) "
                f"| {max(a['longest_starved'] for a in analyses):.1f} "
                f"| {fmt(weighted_run['jain']) if weighted_run else '-'} "
                f"| {burst['burst_ahead'] if burst else '-'} "
                f"| {eta} "
                f"| {fmt(sustained['eta_error_p90_waiting'], 1) if sustained else '-'} "
                f"| {sustained['others_ahead_of_light'] if sustained else '-'}; "
                f"{fmt(sustained['seconds_per_start'] if sustained else None, 3)} |"
            )
    return "\n".join(lines)


def _round(analyses: list[dict[str, Any]], r: int, rounds: int) -> list[dict[str, Any]]:
    per = len(analyses) // rounds
    return analyses[r * per : (r + 1) * per]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task-seconds", type=float, default=0.2)
    parser.add_argument("--policies", default=None, help="default fifo,strict,fair,priority (--quick: strict,priority)")
    parser.add_argument("--workloads", default=None, help="comma-separated words of workload names (default: all)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=Path, help="also write every task's times and level here (JSON)")
    args = parser.parse_args()
    policies = (args.policies or ("strict,priority" if args.quick else "fifo,strict,fair,priority")).split(",")
    words = (args.workloads or ("sustained" if args.quick else "")).split(",")
    chosen = [w for w in WORKLOADS if any(word in (w.__doc__ or "") + w.__name__ for word in words)]
    RESULTS.mkdir(exist_ok=True)
    by_policy: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Round by round, every policy in turn: the policies compared ran minutes apart at most.
        for _ in range(args.repeat):
            for policy in policies:
                by_policy.setdefault(policy, []).extend(run_policy(policy, args.task_seconds, Path(tmp), chosen))
        full = not args.quick and chosen == WORKLOADS and args.repeat == 1
        if full:  # a partial run leaves the committed plots alone, as it does the tables
            for policy in policies:
                print(f"plot: {plot(policy, by_policy[policy], RESULTS).relative_to(RESULTS.parent.parent)}")
    text = table(by_policy) + "\n\n" + summary(by_policy, args.repeat)
    header = f"machine: {machine()}; capacity 1, {args.task_seconds} s tasks, {time.strftime('%Y-%m-%d')}"
    print(header)
    print(text)
    if args.rows:
        args.rows.write_text(json.dumps({p: [a["rows"] for a in analyses] for p, analyses in by_policy.items()}))
    if not full:
        return  # a partial run: the committed results stay those of a full one
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / "fairness-latest.md").write_text(header + "\n\n" + text + "\n")
    numbers = json.dumps(
        {
            policy: [{k: v for k, v in a.items() if k != "rows"} for a in analyses]
            for policy, analyses in by_policy.items()
        },
        indent=2,
    )
    # The latest is the one to keep; the timestamped copy is for comparing runs locally.
    (RESULTS / "fairness-latest.json").write_text(numbers + "\n")
    (RESULTS / f"fairness-{stamp}.json").write_text(numbers + "\n")


if __name__ == "__main__":
    main()
