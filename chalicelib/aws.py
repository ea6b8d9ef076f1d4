"""The one place boto3 clients are built.

The target is chosen by boto3's own AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_<SERVICE>
variables: unset is real AWS; a moto server or LocalStack is reached by endpoint
alone. Clients are built once per process and endpoint (building one costs
10-20 ms) and share one botocore Config.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import boto3
from botocore.config import Config

from chalicelib import observability

CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 4},
    connect_timeout=3,
    read_timeout=25,  # above the longest SQS long poll we make
    max_pool_connections=64,
    tcp_keepalive=True,
)

_clients: dict[tuple[str, ...], Any] = {}
_lock = threading.Lock()


def _key(service: str) -> tuple[str, ...]:
    env = os.environ
    return (
        service,
        env.get("AWS_ENDPOINT_URL", ""),
        env.get(f"AWS_ENDPOINT_URL_{service.upper()}", ""),
        env.get("AWS_DEFAULT_REGION", env.get("AWS_REGION", "")),
        env.get("AWS_ACCESS_KEY_ID", ""),
    )


def client(service: str) -> Any:
    """A cached boto3 client for ``service`` at the endpoint the environment names."""
    key = _key(service)
    with _lock:
        existing = _clients.get(key)
        if existing is None:
            existing = boto3.session.Session().client(service, config=CONFIG)
            observability.count_throttles(existing)
            _clients[key] = existing
        return existing


def probe_client(service: str, timeout: float) -> Any:
    """A fresh client that gives up after ``timeout`` seconds and never retries: to check that an endpoint answers."""
    config = CONFIG.merge(
        Config(connect_timeout=timeout, read_timeout=timeout, retries={"mode": "standard", "max_attempts": 1})
    )
    return boto3.session.Session().client(service, config=config)


def reset() -> None:
    """Forget cached clients (tests start a new moto mock per test)."""
    with _lock:
        _clients.clear()
