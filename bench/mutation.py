"""Kill rates of the last `mutmut run`, per module and per part of the services.

`make mutation` runs mutmut (configured in pyproject.toml) and then this. A mutant
counts as killed when a test failed (or timed out) with it in place; "no tests"
mutants count against the rate, as survivors do. Mutants named in EQUIVALENT
behave exactly like the code (no test can tell them apart): they are listed with
the reason and left out of the second rate.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "mutation.json"

# The services' parts the mutation targets name, by module: submitting, results and
# cancelling, and the worker's pick and run. Every other service module is "other".
MODULE_PARTS = {
    "services.submitting": "submit",
    "services.results": "result and cancel",
    "worker.picking": "worker: pick",
    "worker.held": "worker: pick",
    "worker.loop": "worker: run and outcome",
    "worker.executing": "worker: run and outcome",
    "worker.heartbeat": "worker: run and outcome",
    "worker.deletes": "worker: run and outcome",
}

# Mutant -> (a piece of its mutated line, why it is equivalent). Names are mutmut's
# (module.x_function__mutmut_N) and shift when a function changes: a name whose
# mutant no longer shows that piece is reported as stale and counted like any other.
EQUIVALENT: dict[str, tuple[str, str]] = {
    "chalicelib.policy.levels.x_bucket_start__mutmut_3": (
        "int(now / bucket_seconds)",
        "now // b and int(now / b) agree for the positive times used",
    ),
    "chalicelib.policy.capacity.x_free_slots__mutmut_3": (
        "s.slot_id <= capacity",
        "a held slot at id == capacity is outside range(capacity) anyway",
    ),
    "chalicelib.policy.ordering.x_takes_of__mutmut_10": (
        "n <= 0",
        "zero takes were dropped just before: n <= 0 and n < 0 agree",
    ),
    "chalicelib.policy.ordering.x_takes_of__mutmut_11": (
        "n < 1",
        "zero takes were dropped just before: n < 1 and n < 0 agree",
    ),
    "chalicelib.policy.ordering.x_batch_size__mutmut_4": (
        "ahead_seconds < 0",
        "with ahead_seconds == 0 both branches give 1",
    ),
    "chalicelib.policy.ordering.x_percentile__mutmut_7": (
        "len(sorted_values) + 1",
        "q is at most 1: the rank never passes len - 1",
    ),
    "chalicelib.policy.ordering.x_pick_within_level__mutmut_2": (
        "(sample, None)",
        "the first of the whole sorted list",
    ),
    "chalicelib.policy.ordering.x_pick_within_level__mutmut_5": (
        "(sample, 2)",
        "the first of the best two is the first of one",
    ),
    "chalicelib.policy.position.x_queue_position__mutmut_16": (
        "ahead_in_level + 2",
        "the task's level only needs to be counted: 1 or 2 make the same order up to the task",
    ),
    "chalicelib.policy.position.x_queue_position__mutmut_27": (
        "position <= POSITION_LIMIT",
        "the loop returns long before",
    ),
    "chalicelib.policy.position.x_queue_position__mutmut_36": (
        "return",
        "unreachable: the task's own level is always counted, so a level is always chosen",
    ),
    # The services. Flags only ever tested for truth, counters only compared for equality,
    # and arguments the worker's own use makes irrelevant.
    "chalicelib.services.xǁHeartbeatǁ__init____mutmut_13": (
        "self._refused = None",
        "lost is `_refused or <lease check>`: None and False give the same",
    ),
    "chalicelib.services.xǁAheadǁ__init____mutmut_8": (
        "self._since = None  # when the oldest task held was picked (monotonic)",
        "_since is read only while tasks are held, and add() sets it first",
    ),
    "chalicelib.services.xǁAheadǁ__init____mutmut_9": (
        "self._since = 1.0  # when the oldest task held was picked (monotonic)",
        "_since is read only while tasks are held, and add() sets it first",
    ),
    "chalicelib.services.xǁAheadǁ__init____mutmut_10": (
        "self._overdue = None  # the running task outlived the limit: nothing more is held",
        "_overdue is only tested for truth: None and False agree",
    ),
    "chalicelib.services.xǁAheadǁ__init____mutmut_12": (
        "self._gave_back = None",
        "_gave_back is only or-ed and tested for truth: None and False agree",
    ),
    "chalicelib.services.xǁAheadǁ__init____mutmut_15": (
        "self._run = 1  # which run the watchdog watches; a late timer of an earlier one does nothing",
        "run numbers are only compared for equality: starting at 1 keeps them distinct",
    ),
    "chalicelib.services.xǁAheadǁran__mutmut_4": (
        "self._run -= 1",
        "run numbers are only compared for equality: counting down keeps them distinct",
    ),
    "chalicelib.services.xǁAheadǁran__mutmut_5": (
        "self._run += 2",
        "run numbers are only compared for equality: steps of two keep them distinct",
    ),
    "chalicelib.services.xǁAheadǁran__mutmut_6": (
        "self._overdue = None",
        "_overdue is only tested for truth: None and False agree",
    ),
    "chalicelib.services.xǁAheadǁadd__mutmut_2": (
        "if batch or not self._held:",
        "the worker adds a batch only when nothing is held; an empty batch's stamp is never read",
    ),
    "chalicelib.services.xǁAheadǁrunning__mutmut_1": (
        "if self._limit < 0:",
        "a limit of 0 means no prefetch: nothing is held or being picked, so the next check returns",
    ),
    "chalicelib.services.xǁServicesǁrun__mutmut_70": (
        "snapshot = policy.backlog_from_payload(handoff.backlog) if (handoff.backlog) or True else None",
        "backlog_from_payload of a missing backlog is None, as the conditional gives",
    ),
    "chalicelib.services.xǁServicesǁrun__mutmut_91": (
        "looked = None",
        "looked is only tested for truth: None and False agree",
    ),
    "chalicelib.services.xǁServicesǁrun__mutmut_147": (
        'pool = pool or ThreadPoolExecutor(None, thread_name_prefix="prefetch")',
        "one pick ahead at a time (each is awaited before the next): the pool's size is moot",
    ),
    "chalicelib.services.xǁServicesǁrun__mutmut_149": (
        'pool = pool or ThreadPoolExecutor(thread_name_prefix="prefetch")',
        "one pick ahead at a time (each is awaited before the next): the pool's size is moot",
    ),
    "chalicelib.services.xǁServicesǁrun__mutmut_151": (
        'pool = pool or ThreadPoolExecutor(2, thread_name_prefix="prefetch")',
        "one pick ahead at a time (each is awaited before the next): the pool's size is moot",
    ),
    "chalicelib.services.xǁServicesǁrun__mutmut_208": (
        "pool.shutdown(wait=None)",
        "every pick ahead is awaited before the shutdown: only an idle thread is left",
    ),
    "chalicelib.services.xǁServicesǁrun__mutmut_209": (
        "pool.shutdown(wait=False)",
        "every pick ahead is awaited before the shutdown: only an idle thread is left",
    ),
    "chalicelib.services.xǁServicesǁrun__mutmut_227": (
        "self.control.add_backlog(1, 0, tallies)",
        "a delta of 0 changes no level's count: which level carries the tallies is moot",
    ),
    "chalicelib.services.xǁServicesǁ_pick_next__mutmut_10": (
        "if snapshot is not None and policy.choose_level(state, None) is None:",
        "choose_level is None exactly when nothing is counted, under every policy",
    ),
    "chalicelib.services.xǁServicesǁ_run_one__mutmut_41": (
        'self._to_dead_letters(level, message, task.error or "XXfailedXX")',
        "a FAILURE always has an error: the fallback is unused",
    ),
    "chalicelib.services.xǁServicesǁ_run_one__mutmut_42": (
        'self._to_dead_letters(level, message, task.error or "FAILED")',
        "a FAILURE always has an error: the fallback is unused",
    ),
    "chalicelib.services.xǁServicesǁ_run_one__mutmut_119": (
        'self._to_dead_letters(level, message, error or "XXfailedXX")',
        "a FAILURE always has an error: the fallback is unused",
    ),
    "chalicelib.services.xǁServicesǁ_run_one__mutmut_120": (
        'self._to_dead_letters(level, message, error or "FAILED")',
        "a FAILURE always has an error: the fallback is unused",
    ),
    "chalicelib.services.xǁServicesǁ_some_of__mutmut_1": (
        "if len(messages) < 1:",
        "the best one of one message is that message, with nothing to give back",
    ),
}


def mutated_lines(name: str) -> str:
    shown = subprocess.run(
        [sys.executable, "-m", "mutmut", "show", name], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout
    return "\n".join(line for line in shown.splitlines() if line.startswith("+") and not line.startswith("+++"))


def equivalents() -> tuple[dict[str, str], list[str]]:
    """The named equivalents whose mutant still shows its piece, and the stale names."""
    current, stale = {}, []
    for name, (piece, reason) in EQUIVALENT.items():
        if piece in mutated_lines(name):
            current[name] = reason
        else:
            stale.append(name)
    return current, stale


LINE = re.compile(r"^\s*(?P<name>[\w.ǁ]+__mutmut_\d+): (?P<status>.+?)\s*$")


def results() -> list[tuple[str, str]]:
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [(m["name"], m["status"]) for m in map(LINE.match, out.splitlines()) if m]


def group_of(name: str) -> str:
    """'policy', 'validation', or 'services: <part>' for a mutant's name."""
    base = name.rsplit("__mutmut_", 1)[0]  # chalicelib.policy.levels.x_level_for
    module = base.rpartition(".")[0].removeprefix("chalicelib.")
    if module in MODULE_PARTS:
        return f"services: {MODULE_PARTS[module]}"
    if module.startswith(("services", "worker")) or module == "deps":
        return "services: other"
    return module.partition(".")[0]  # policy.ordering -> policy


def summarise(rows: list[tuple[str, str]], equivalent: dict[str, str]) -> dict[str, dict[str, float]]:
    by_group: dict[str, Counter[str]] = defaultdict(Counter)
    for name, status in rows:
        by_group[group_of(name)][status] += 1
        if name in equivalent and status != "killed":
            by_group[group_of(name)]["equivalent"] += 1
    table: dict[str, dict[str, float]] = {}
    for group in sorted(by_group):
        c = by_group[group]
        total = sum(n for status, n in c.items() if status != "equivalent")
        killed = c["killed"] + c["timeout"]
        table[group] = {
            "mutants": total,
            "killed": killed,
            "survived": c["survived"],
            "no tests": c["no tests"],
            "equivalent": c["equivalent"],
            "kill rate": killed / total if total else 0.0,
            "kill rate without equivalents": killed / (total - c["equivalent"]) if total > c["equivalent"] else 0.0,
        }
    return table


def main() -> None:
    rows = results()
    if not rows:
        sys.exit("no mutmut results: run `make mutation` first")
    equivalent, stale = equivalents()
    table = summarise(rows, equivalent)
    header = f"{'part':34} {'mutants':>7} {'killed':>6} {'survived':>8} {'no tests':>8} {'equiv.':>6} {'rate':>6}"
    print(header)
    for group, r in table.items():
        print(
            f"{group:34} {r['mutants']:7.0f} {r['killed']:6.0f} {r['survived']:8.0f} {r['no tests']:8.0f} "
            f"{r['equivalent']:6.0f} {r['kill rate without equivalents']:6.1%}"
        )
    left = [name for name, status in rows if status in ("survived", "no tests") and name not in equivalent]
    if stale:
        print(f"\n{len(stale)} names in EQUIVALENT no longer show their mutation (counted as any other): {stale}")
    print(f"\n{len(left)} mutants left alive (not named equivalent); `mutmut show <name>` shows each:")
    for name in left:
        print(f"  {name}")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(
        json.dumps({"table": table, "alive": left, "equivalent": equivalent, "stale": stale}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
