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


# --- The README's configuration table, claim by claim --------------------------------
# Defaults written out from the README's table (not read from the code).
README_DEFAULTS = {
    "handoff": "local",  # NAMES sets local; `lambda` is checked below
    "capacity": 1,
    "window_seconds": 6000,
    "window_buckets": 10,
    "thresholds": (1, 6, 16, 26, 36),
    "policy": "priority",
    "shares": (32, 16, 8, 4, 2, 1),
    "floor_picks": 28,
    "fair_sample": 10,
    "task_function": "chalicelib.tasks.limited_f",
    "task_seconds": 60.0,
    "lease_seconds": 60,
    "run_lease_seconds": 930,
    "runner_seconds": 240.0,
    "result_ttl_seconds": 604800,
    "max_body_bytes": 65536,
    "max_user_id_length": 128,
    "max_weight": 1000,
    "admin_token": "",
    "auth": "none",
    "max_x_bytes": 32768,
    "idempotency_seconds": 86400,
    "requeue_after_seconds": 604800,
    "prefetch_seconds": 1.0,
    "max_queued_per_user": 100,
}


def test_every_default_is_the_one_the_readme_states() -> None:
    settings = load(NAMES)
    assert {name: getattr(settings, name) for name in README_DEFAULTS} == README_DEFAULTS


def test_the_default_hand_off_is_lambda_and_it_needs_the_function_names() -> None:
    env = {k: v for k, v in NAMES.items() if k != "PQH_HANDOFF"}
    with pytest.raises(ConfigError, match="PQH_WORKER_FUNCTION"):
        load(env)
    settings = load({**env, "PQH_WORKER_FUNCTION": "w", "PQH_DISPATCHER_FUNCTION": "d"})
    assert (settings.handoff, settings.worker_function, settings.dispatcher_function) == ("lambda", "w", "d")


@pytest.mark.parametrize(
    ("variable", "highest_allowed"),
    [
        ("PQH_CAPACITY", "1000"),
        ("PQH_FAIR_SAMPLE", "10"),
        ("PQH_TASK_SECONDS", "600"),
        ("PQH_MAX_BODY_BYTES", "131072"),
        ("PQH_REQUEUE_AFTER_SECONDS", str(13 * 24 * 3600)),
        ("PQH_MAX_QUEUED_PER_USER", "1000000"),
        ("PQH_FLOOR_PICKS", "1000"),
    ],
)
def test_the_stated_upper_bounds_hold_and_are_refused_by_name_above(variable: str, highest_allowed: str) -> None:
    load({**NAMES, variable: highest_allowed})
    above = str(int(highest_allowed) + 1)
    with pytest.raises(ConfigError, match=variable):
        load({**NAMES, variable: above})


@pytest.mark.parametrize("variable", ["PQH_CAPACITY", "PQH_FAIR_SAMPLE", "PQH_WINDOW_BUCKETS", "PQH_BACKLOG_SHARDS"])
def test_zero_is_refused_where_at_least_one_is_needed(variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load({**NAMES, variable: "0"})


def test_a_window_that_is_not_a_multiple_of_its_buckets_is_refused() -> None:
    with pytest.raises(ConfigError, match="must be a multiple of PQH_WINDOW_BUCKETS"):
        load({**NAMES, "PQH_WINDOW_SECONDS": "6001"})


def test_a_floor_of_fewer_picks_than_levels_is_refused() -> None:
    assert load({**NAMES, "PQH_FLOOR_PICKS": "6"}).floor_picks == 6  # one pick per level: the least
    with pytest.raises(ConfigError, match="PQH_FLOOR_PICKS=5 must be between 6 and 1000"):
        load({**NAMES, "PQH_FLOOR_PICKS": "5"})


def test_an_unknown_policy_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match="priority, fair, strict, fifo"):
        load({**NAMES, "PQH_POLICY": "lottery"})


def test_the_readme_documents_every_variable_the_service_reads() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    documented = set(re.findall(r"^\| `(PQH_[A-Z_]+)`", (root / "README.md").read_text(), flags=re.M))
    read = set(re.findall(r'"(PQH_[A-Z_]+)"', (root / "chalicelib" / "settings.py").read_text()))
    assert read, "no variables found in settings.py"
    assert read - documented == set(), "read by the service but missing from the README's configuration table"


def test_a_user_may_have_a_hundred_tasks_queued_unless_told_otherwise() -> None:
    assert load(NAMES).max_queued_per_user == 100
    assert load({**NAMES, "PQH_MAX_QUEUED_PER_USER": "5"}).max_queued_per_user == 5


@pytest.mark.parametrize("value", ["0", "-3", "many", "2000000"])
def test_a_malformed_queued_limit_is_refused_with_its_name(value: str) -> None:
    with pytest.raises(ConfigError, match="PQH_MAX_QUEUED_PER_USER"):
        load({**NAMES, "PQH_MAX_QUEUED_PER_USER": value})


def test_a_started_task_may_start_again_930_s_after_its_run_began_unless_told_otherwise() -> None:
    assert load(NAMES).run_lease_seconds == 930
    assert load({**NAMES, "PQH_RUN_LEASE_SECONDS": "6"}).run_lease_seconds == 6


@pytest.mark.parametrize("value", ["1", "soon", "43201"])
def test_a_malformed_run_lease_is_refused_with_its_name(value: str) -> None:
    with pytest.raises(ConfigError, match="PQH_RUN_LEASE_SECONDS"):
        load({**NAMES, "PQH_RUN_LEASE_SECONDS": value})


def test_backlog_shards_are_at_most_the_slots_that_pick_from_them() -> None:
    assert load({**NAMES, "PQH_CAPACITY": "100", "PQH_BACKLOG_SHARDS": "100"}).backlog_shards == 100
    with pytest.raises(ConfigError, match="PQH_BACKLOG_SHARDS=101 must be between 1 and 100"):
        load({**NAMES, "PQH_CAPACITY": "1000", "PQH_BACKLOG_SHARDS": "101"})
    with pytest.raises(ConfigError, match="PQH_BACKLOG_SHARDS=5 must be at most PQH_CAPACITY=4"):
        load({**NAMES, "PQH_CAPACITY": "4", "PQH_BACKLOG_SHARDS": "5"})
