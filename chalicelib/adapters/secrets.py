"""The admin token: an SSM parameter on AWS (AWS Lambda Powertools Parameters, cached), PQH_ADMIN_TOKEN locally.

A SecureString parameter is decrypted on read (the functions' roles may use the
KMS key only through SSM, for this parameter). Each process keeps what it read for
``Settings.admin_token_max_age`` seconds, so a rotated token is taken up by every
warm function within that time, at one GetParameter per process per period.
"""

from __future__ import annotations

import threading
from typing import Any

from aws_lambda_powertools.utilities.parameters import SSMProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

from chalicelib.settings import ConfigError, Settings


class SsmAdminTokenSource:
    """The admin token held in one SSM parameter; the port AdminTokenSource."""

    def __init__(self, ssm_client: Any, name: str, max_age_seconds: int) -> None:
        self._provider = SSMProvider(boto3_client=ssm_client)
        self._name = name
        self._max_age = max_age_seconds

    def admin_token(self) -> str:
        try:
            value = self._provider.get(self._name, max_age=self._max_age, decrypt=True)
        except GetParameterError as exc:
            raise ConfigError(
                f"cannot read the admin token from SSM parameter {self._name!r} (PQH_ADMIN_TOKEN_PARAMETER): {exc}"
            ) from exc
        return str(value or "").strip()

    def forget(self) -> None:
        """Drop the cached value: the next read asks SSM (tests; an operator's forced rotation)."""
        self._provider.clear_cache()  # type: ignore[no-untyped-call]


class EnvironmentAdminTokenSource:
    """PQH_ADMIN_TOKEN, for the local runner and tests."""

    def __init__(self, token: str) -> None:
        self._token = token

    def admin_token(self) -> str:
        return self._token


_lock = threading.Lock()
# One source per (client, parameter, max age): the cache must outlive a request.
_sources: dict[tuple[int, str, int], tuple[Any, SsmAdminTokenSource]] = {}


def admin_token_source(settings: Settings, ssm_client: Any) -> SsmAdminTokenSource | EnvironmentAdminTokenSource:
    """The source the settings name: the SSM parameter when PQH_ADMIN_TOKEN_PARAMETER is set, else PQH_ADMIN_TOKEN."""
    if not settings.admin_token_parameter:
        return EnvironmentAdminTokenSource(settings.admin_token)
    key = (id(ssm_client), settings.admin_token_parameter, settings.admin_token_max_age)
    with _lock:
        found = _sources.get(key)
        # The client is kept beside its source, so its id cannot be reused by another client.
        if found is None or found[0] is not ssm_client:
            found = (
                ssm_client,
                SsmAdminTokenSource(ssm_client, settings.admin_token_parameter, settings.admin_token_max_age),
            )
            _sources[key] = found
        return found[1]


def admin_token(settings: Settings, ssm_client: Any) -> str:
    """The admin token now ('' when none is configured); the SSM read is cached per process."""
    return admin_token_source(settings, ssm_client).admin_token()


def reset() -> None:
    """Forget every cached source (tests start a new moto mock per test)."""
    with _lock:
        _sources.clear()
