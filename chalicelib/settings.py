"""Settings: one frozen dataclass, built from the environment when asked for.

Chalice's test client swaps ``os.environ`` per call, so nothing here is bound at
import time. Resource names have no defaults; tunables do, and all are checked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from chalicelib.policy import (
    DEFAULT_FLOOR_PICKS,
    DEFAULT_POLICY,
    DEFAULT_SHARES,
    DEFAULT_THRESHOLDS,
    LEVELS,
    MAX_SHARDS,
    POLICIES,
    validate_shares,
    validate_thresholds,
)


class ConfigError(Exception):
    """A PQH_* setting is missing or malformed; the message names it."""


HANDOFF_MODES = ("lambda", "local")
# A STARTED task may be started again only after this long (its worker died). It
# exceeds the worker Lambda's timeout (900 s), and the queues' visibility timeout
# (960 s) exceeds it, so a message is never delivered again while its run lives.
TASK_RUN_LEASE_SECONDS = 930
AUTH_MODES = ("none", "api_key")


@dataclass(frozen=True)
class Settings:
    tasks_table: str
    usage_table: str
    control_table: str
    queue_prefix: str
    worker_function: str
    dispatcher_function: str
    handoff: str = "lambda"
    capacity: int = 1
    window_seconds: int = 6000
    window_buckets: int = 10
    thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    policy: str = DEFAULT_POLICY
    shares: tuple[int, ...] = DEFAULT_SHARES
    # The priority policy: a level with queued tasks is picked at least once in every this many picks.
    floor_picks: int = DEFAULT_FLOOR_PICKS
    fair_sample: int = 10
    task_seconds: float = 60.0
    task_function: str = "chalicelib.tasks.limited_f"
    lease_seconds: int = 60
    run_lease_seconds: int = TASK_RUN_LEASE_SECONDS
    runner_seconds: float = 240.0
    max_body_bytes: int = 65536
    max_user_id_length: int = 128
    max_weight: int = 1000
    result_ttl_seconds: int = 7 * 24 * 3600
    admin_token: str = ""
    # On AWS the admin token is an SSM parameter (a SecureString) named here; when set, it
    # is used instead of admin_token, and each process reads it again after admin_token_max_age seconds.
    admin_token_parameter: str = ""
    admin_token_max_age: int = 300
    auth: str = "none"  # none: user_id from the body (local use only); api_key: from the caller's key
    max_x_bytes: int = 32768
    idempotency_seconds: int = 24 * 3600
    requeue_after_seconds: int = 7 * 24 * 3600  # a message queued this long is sent again (SQS keeps 14 days)
    # A worker picks its next task while the current one runs when tasks take at
    # most this long on average (0: never). The choice is then that much older.
    prefetch_seconds: float = 1.0
    # A user with this many tasks queued (not yet started) gets 429 for another.
    max_queued_per_user: int = 100
    # /stats answers from what this process computed at most this long ago (0: never cached).
    stats_cache_seconds: float = 5.0
    # The backlog record split into this many (policy/shards.py): more submits and picks a second.
    backlog_shards: int = 1

    @property
    def bucket_seconds(self) -> int:
        return self.window_seconds // self.window_buckets

    def queue_name(self, level: int) -> str:
        return f"{self.queue_prefix}-level-{level}"

    def dlq_name(self, level: int) -> str:
        return f"{self.queue_prefix}-level-{level}-dlq"


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set; it names an AWS resource (see the README's configuration table)")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not an integer") from exc
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(f"{name}={value} must be {bound}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number") from exc
    if not value >= minimum:  # also rejects NaN
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def _thresholds(env: Mapping[str, str]) -> tuple[int, ...]:
    raw = env.get("PQH_LEVEL_THRESHOLDS", "").strip()
    if not raw:
        return DEFAULT_THRESHOLDS
    try:
        values = tuple(int(part) for part in raw.split(","))
    except ValueError as exc:
        raise ConfigError(f"PQH_LEVEL_THRESHOLDS={raw!r} must be five comma-separated integers") from exc
    try:
        validate_thresholds(values)
    except ValueError as exc:
        raise ConfigError(f"PQH_LEVEL_THRESHOLDS={raw!r}: {exc}") from exc
    return values


def _shares(env: Mapping[str, str]) -> tuple[int, ...]:
    raw = env.get("PQH_LEVEL_SHARES", "").strip()
    if not raw:
        return DEFAULT_SHARES
    try:
        values = tuple(int(part) for part in raw.split(","))
        validate_shares(values)
    except ValueError as exc:
        raise ConfigError(f"PQH_LEVEL_SHARES={raw!r} must be six comma-separated integers, each at least 1") from exc
    return values


def _task_seconds(env: Mapping[str, str]) -> float:
    value = _float(env, "PQH_TASK_SECONDS", 60.0, 0.0)
    if value > 600:
        # The worker Lambda stops at 900 s and takes no new task after PQH_RUNNER_SECONDS (240 s).
        raise ConfigError(f"PQH_TASK_SECONDS={value} must be at most 600")
    return value


# SSM: letters, digits, _ . - and / between levels of a hierarchical name (which starts with /).
_PARAMETER_NAME = re.compile(r"(/[A-Za-z0-9_.\-]+)+|[A-Za-z0-9_.\-]+")


def _parameter_name(env: Mapping[str, str]) -> str:
    name = env.get("PQH_ADMIN_TOKEN_PARAMETER", "").strip()
    if name and (len(name) > 1011 or not _PARAMETER_NAME.fullmatch(name)):
        raise ConfigError(
            f"PQH_ADMIN_TOKEN_PARAMETER={name!r} is not an SSM parameter name (e.g. /pqh/prod/admin-token)"
        )
    return name


def auth_mode(env: Mapping[str, str]) -> str:
    mode = env.get("PQH_AUTH", "").strip() or "none"
    if mode not in AUTH_MODES:
        raise ConfigError(f"PQH_AUTH={mode!r} must be one of {', '.join(AUTH_MODES)}")
    return mode


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Build and check the settings from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    handoff = env.get("PQH_HANDOFF", "lambda").strip() or "lambda"
    if handoff not in HANDOFF_MODES:
        raise ConfigError(f"PQH_HANDOFF={handoff!r} must be one of {', '.join(HANDOFF_MODES)}")
    needs_functions = handoff == "lambda"
    window_seconds = _int(env, "PQH_WINDOW_SECONDS", 6000, 1)
    window_buckets = _int(env, "PQH_WINDOW_BUCKETS", 10, 1, 100)
    if window_seconds % window_buckets:
        raise ConfigError(
            f"PQH_WINDOW_SECONDS={window_seconds} must be a multiple of PQH_WINDOW_BUCKETS={window_buckets}"
        )
    lease_seconds = _int(env, "PQH_LEASE_SECONDS", 60, 3, 900)
    auth = auth_mode(env)
    policy_name = env.get("PQH_POLICY", "").strip() or DEFAULT_POLICY
    if policy_name not in POLICIES:
        raise ConfigError(f"PQH_POLICY={policy_name!r} must be one of {', '.join(POLICIES)}")
    capacity = _int(env, "PQH_CAPACITY", 1, 1, 1000)
    # Every shard needs slots of its own picking (docs/policy.md, "Backlog shards").
    backlog_shards = _int(env, "PQH_BACKLOG_SHARDS", 1, 1, MAX_SHARDS)
    if backlog_shards > capacity:
        raise ConfigError(f"PQH_BACKLOG_SHARDS={backlog_shards} must be at most PQH_CAPACITY={capacity}")
    return Settings(
        tasks_table=_required(env, "PQH_TASKS_TABLE"),
        usage_table=_required(env, "PQH_USAGE_TABLE"),
        control_table=_required(env, "PQH_CONTROL_TABLE"),
        queue_prefix=_required(env, "PQH_QUEUE_PREFIX"),
        worker_function=_required(env, "PQH_WORKER_FUNCTION") if needs_functions else "",
        dispatcher_function=_required(env, "PQH_DISPATCHER_FUNCTION") if needs_functions else "",
        handoff=handoff,
        capacity=capacity,
        window_seconds=window_seconds,
        window_buckets=window_buckets,
        thresholds=_thresholds(env),
        policy=policy_name,
        shares=_shares(env),
        # At least one pick per level: the floor's proof needs every level's deadline to fit (F >= LEVELS).
        floor_picks=_int(env, "PQH_FLOOR_PICKS", DEFAULT_FLOOR_PICKS, LEVELS, 1000),
        fair_sample=_int(env, "PQH_FAIR_SAMPLE", 10, 1, 10),
        task_seconds=_task_seconds(env),
        task_function=env.get("PQH_TASK_FUNCTION", "").strip() or "chalicelib.tasks.limited_f",
        lease_seconds=lease_seconds,
        # Shorter only where runs are known to be shorter (the local runner's time-compressed tests).
        run_lease_seconds=_int(env, "PQH_RUN_LEASE_SECONDS", TASK_RUN_LEASE_SECONDS, 2, 43200),
        runner_seconds=_float(env, "PQH_RUNNER_SECONDS", 240.0, 1.0),
        # Up to 128 KiB: a record holds x and the default result (x again) in one 400 KB item.
        max_body_bytes=_int(env, "PQH_MAX_BODY_BYTES", 65536, 64, 131072),
        max_user_id_length=_int(env, "PQH_MAX_USER_ID_LENGTH", 128, 1, 1024),
        max_weight=_int(env, "PQH_MAX_WEIGHT", 1000, 1),
        result_ttl_seconds=_int(env, "PQH_RESULT_TTL_SECONDS", 7 * 24 * 3600, 60),
        admin_token=env.get("PQH_ADMIN_TOKEN", "").strip(),
        admin_token_parameter=_parameter_name(env),
        auth=auth,
        max_x_bytes=_int(env, "PQH_MAX_X_BYTES", 32768, 16, 131072),
        idempotency_seconds=_int(env, "PQH_IDEMPOTENCY_SECONDS", 24 * 3600, 60, 30 * 24 * 3600),
        # Below SQS's 14-day retention, with a day to spare for a tick that fails.
        requeue_after_seconds=_int(env, "PQH_REQUEUE_AFTER_SECONDS", 7 * 24 * 3600, 60, 13 * 24 * 3600),
        prefetch_seconds=_float(env, "PQH_PREFETCH_SECONDS", 1.0, 0.0),
        max_queued_per_user=_int(env, "PQH_MAX_QUEUED_PER_USER", 100, 1, 1_000_000),
        stats_cache_seconds=_float(env, "PQH_STATS_CACHE_SECONDS", 5.0, 0.0),
        backlog_shards=backlog_shards,
    )
