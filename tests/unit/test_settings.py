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


def test_a_user_may_have_a_hundred_tasks_queued_unless_told_otherwise() -> None:
    assert load(NAMES).max_queued_per_user == 100
    assert load({**NAMES, "PQH_MAX_QUEUED_PER_USER": "5"}).max_queued_per_user == 5


@pytest.mark.parametrize("value", ["0", "-3", "many", "2000000"])
def test_a_malformed_queued_limit_is_refused_with_its_name(value: str) -> None:
    with pytest.raises(ConfigError, match="PQH_MAX_QUEUED_PER_USER"):
        load({**NAMES, "PQH_MAX_QUEUED_PER_USER": value})
