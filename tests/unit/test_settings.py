"""Settings: resource names are required, tunables have checked defaults."""

from __future__ import annotations

import pytest

from chalicelib.settings import ConfigError, load

NAMES = {
    "PQH_TASKS_TABLE": "t",
    "PQH_USAGE_TABLE": "u",
    "PQH_CONTROL_TABLE": "c",
    "PQH_QUEUE_PREFIX": "q",
    "PQH_HANDOFF": "local",
}


def test_workers_pick_ahead_for_tasks_of_up_to_a_second_unless_told_otherwise() -> None:
    assert load(NAMES).prefetch_seconds == 1.0
    assert load({**NAMES, "PQH_PREFETCH_SECONDS": "0"}).prefetch_seconds == 0.0
    assert load({**NAMES, "PQH_PREFETCH_SECONDS": "2.5"}).prefetch_seconds == 2.5


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_a_malformed_prefetch_setting_is_refused_with_its_name(value: str) -> None:
    with pytest.raises(ConfigError, match="PQH_PREFETCH_SECONDS"):
        load({**NAMES, "PQH_PREFETCH_SECONDS": value})


def test_a_missing_resource_name_is_refused_with_its_name() -> None:
    env = {k: v for k, v in NAMES.items() if k != "PQH_CONTROL_TABLE"}
    with pytest.raises(ConfigError, match="PQH_CONTROL_TABLE"):
        load(env)


def test_a_started_task_may_start_again_930_s_after_its_run_began_unless_told_otherwise() -> None:
    assert load(NAMES).run_lease_seconds == 930
    assert load({**NAMES, "PQH_RUN_LEASE_SECONDS": "6"}).run_lease_seconds == 6


@pytest.mark.parametrize("value", ["1", "soon", "43201"])
def test_a_malformed_run_lease_is_refused_with_its_name(value: str) -> None:
    with pytest.raises(ConfigError, match="PQH_RUN_LEASE_SECONDS"):
        load({**NAMES, "PQH_RUN_LEASE_SECONDS": value})
