"""Faults, one at a time and all together: every task ends SUCCESS or FAILURE exactly once.

Each scenario runs the production services and adapters on moto with Lambda
stand-ins that can be killed at chosen points (local/chaos.py), then accounts
for every submitted task: none lost, none whose function completed twice,
poison tasks FAILURE with a reason and in their dead-letter queue, no slot held
after its lease.
"""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.worker.loop import Worker
from local import moto_patches
from local.chaos import ChaosConfig, ChaosReport, run_chaos

QUIET = {
    "poison_share": 0.0,
    "kill_rate": 0.0,
    "dispatcher_death_rate": 0.0,
    "throttle_rate": 0.0,
    "duplicate_rate": 0.0,
}


# A run takes 20-80 s here. Each fault costs seconds of compressed timeouts (a killed
# worker's message comes back after 7 s, its slot after 3 s), so a run that draws
# many faults on a slow machine takes longer: the budget is generous, and a run
# that exceeds it says so instead of reporting its unfinished tasks as lost.
BUDGET_SECONDS = 360


@pytest.fixture(autouse=True)
def _moto_patched_for_this_test_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_chaos patches moto for good (its Lambda stand-ins write from several threads); here, for one test."""
    moto_patches.sqs_speed(monkeypatch.setattr)
    moto_patches.atomic_writes(monkeypatch.setattr)


def run(**faults: Any) -> ChaosReport:
    config = ChaosConfig(
        **{**QUIET, **faults, "tasks": 20, "users": 4, "capacity": 2, "timeout_seconds": BUDGET_SECONDS}
    )
    report = run_chaos(config)
    print(report.as_dict())
    assert not report.timed_out, f"not settled within {BUDGET_SECONDS} s: {report.as_dict()}"
    assert report.submitted == 20
    assert report.succeeded + report.failed == report.submitted
    assert report.lost == [] and report.run_twice == []
    assert report.poison_not_dead_lettered == [] and report.wrong_outcome == []
    assert report.slots_held_after_lease == 0
    return report


def test_workers_that_crash_or_time_out_mid_task() -> None:
    report = run(kill_rate=0.15)
    assert any(kind.startswith("killed") for kind in report.injected), report.injected
    assert report.failed == sum(n for reason, n in report.failure_reasons.items() if "worker stopped" in reason)


def test_a_dispatcher_that_dies_between_claiming_a_slot_and_handing_it_off() -> None:
    # Workers that stop after a task or two: a dozen hand-offs or more, not the two
    # or three that 20 short tasks need otherwise (none killed in a third of runs).
    report = run(dispatcher_death_rate=0.4, runner_seconds=0.05)
    assert report.injected["killed dispatcher before hand-off"] > 0
    assert report.succeeded == 20


def test_throttling_and_5xx_from_dynamodb_and_sqs() -> None:
    report = run(throttle_rate=0.2)
    assert report.injected["503 from AWS"] > 20
    # A call can still fail for good after its retries and crash its worker; three
    # crashes on one task make it FAILURE, with that reason (never a silent loss).
    assert all("worker stopped" in reason for reason in report.failure_reasons), report.failure_reasons


def test_the_same_message_delivered_twice() -> None:
    report = run(duplicate_rate=0.5)
    assert report.injected["duplicate delivery"] > 0
    assert report.succeeded == 20


def test_poison_tasks_fail_with_a_reason_in_the_dead_letter_queue() -> None:
    report = run(poison_share=0.3)
    assert report.failed > 0 and report.failure_reasons == {"poison": report.failed}


def test_slow_tasks_among_short_ones_hand_back_the_tasks_held_behind_them_while_workers_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Workers pick 0.5 s of short tasks ahead; a slow task (1.2 s) sends them back
    # after 1 s, for any slot. With kills on top: nothing lost, nothing run twice.
    # Under the fair policy every batch may hold several tasks; under priority only
    # the most urgent work is held ahead, so whether a slow task had any behind it
    # was left to chance (one run in several had none).
    handed_back: list[int] = []
    put_back_now = Worker._put_back_now

    def counted(self: Worker, picks: list[Any]) -> None:
        handed_back.append(len(picks))
        put_back_now(self, picks)

    monkeypatch.setattr(Worker, "_put_back_now", counted)
    run(slow_share=0.2, slow_seconds=1.2, kill_rate=0.03, prefetch_seconds=0.5, task_seconds=0.02, policy="fair")
    assert handed_back, "no slow task ever had tasks held behind it"


@pytest.mark.parametrize("seed", [11])
def test_all_faults_at_once(seed: int) -> None:
    run(poison_share=0.1, kill_rate=0.05, dispatcher_death_rate=0.1, throttle_rate=0.1, duplicate_rate=0.1, seed=seed)


def test_a_run_past_its_budget_says_so_rather_than_only_counting_losses() -> None:
    report = run_chaos(ChaosConfig(**{**QUIET, "tasks": 3, "users": 1, "capacity": 1, "timeout_seconds": 0}))
    assert report.timed_out and report.as_dict()["timed_out"] is True
