"""The admin token from SSM Parameter Store (moto), and from PQH_ADMIN_TOKEN where no parameter is named."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import pytest
from moto import mock_aws

from chalicelib import settings as settings_mod
from chalicelib.adapters import secrets
from chalicelib.adapters.secrets import EnvironmentAdminTokenSource, SsmAdminTokenSource, admin_token
from chalicelib.ports import AdminTokenSource
from chalicelib.settings import ConfigError, Settings

NAME = "/pqh/test/admin-token"
BASE = {
    "PQH_TASKS_TABLE": "t",
    "PQH_USAGE_TABLE": "u",
    "PQH_CONTROL_TABLE": "c",
    "PQH_QUEUE_PREFIX": "q",
    "PQH_HANDOFF": "local",
}


@pytest.fixture
def ssm() -> Iterator[Any]:
    secrets.reset()
    with mock_aws():
        yield boto3.client("ssm", region_name="us-east-1")
    secrets.reset()


def settings(**env: str) -> Settings:
    return settings_mod.load({**BASE, **env})


def test_with_no_parameter_named_the_environment_variable_is_the_token_and_ssm_is_not_asked() -> None:
    assert admin_token(settings(PQH_ADMIN_TOKEN="local-secret"), None) == "local-secret"
    assert admin_token(settings(), None) == ""  # admin routes disabled


def test_a_securestring_parameter_is_read_decrypted_and_wins_over_the_variable(ssm: Any) -> None:
    ssm.put_parameter(Name=NAME, Value="op-secret", Type="SecureString")
    configured = settings(PQH_ADMIN_TOKEN_PARAMETER=NAME, PQH_ADMIN_TOKEN="stale")
    assert admin_token(configured, ssm) == "op-secret"


def test_a_rotated_token_is_taken_up_once_the_cached_one_is_older_than_max_age(ssm: Any) -> None:
    ssm.put_parameter(Name=NAME, Value="first", Type="SecureString")
    cached = settings(PQH_ADMIN_TOKEN_PARAMETER=NAME)  # max age 300 s
    assert cached.admin_token_max_age == 300
    assert admin_token(cached, ssm) == "first"
    ssm.put_parameter(Name=NAME, Value="second", Type="SecureString", Overwrite=True)
    assert admin_token(cached, ssm) == "first"  # from the cache: no GetParameter per request
    secrets.admin_token_source(cached, ssm).forget()  # as if 300 s had passed
    assert admin_token(cached, ssm) == "second"
    uncached = replace(cached, admin_token_max_age=0)
    ssm.put_parameter(Name=NAME, Value="third", Type="SecureString", Overwrite=True)
    assert admin_token(uncached, ssm) == "third"


def test_the_cache_is_kept_per_process_so_ssm_is_asked_once(ssm: Any) -> None:
    ssm.put_parameter(Name=NAME, Value="op-secret", Type="SecureString")
    calls: list[str] = []
    ssm.meta.events.register("before-call.ssm.GetParameter", lambda **kwargs: calls.append("GetParameter"))
    configured = settings(PQH_ADMIN_TOKEN_PARAMETER=NAME)
    for _ in range(5):
        assert admin_token(configured, ssm) == "op-secret"
    assert calls == ["GetParameter"]


def test_a_missing_parameter_is_a_configuration_error_naming_it(ssm: Any) -> None:
    with pytest.raises(ConfigError, match=r"'/pqh/test/admin-token' \(PQH_ADMIN_TOKEN_PARAMETER\).*ParameterNotFound"):
        admin_token(settings(PQH_ADMIN_TOKEN_PARAMETER=NAME), ssm)


@pytest.mark.parametrize("name", ["has space", "/trailing/", "no//empty", "/x" * 600])
def test_a_malformed_parameter_name_is_refused_when_the_settings_are_read(name: str) -> None:
    with pytest.raises(ConfigError, match="PQH_ADMIN_TOKEN_PARAMETER"):
        settings(PQH_ADMIN_TOKEN_PARAMETER=name)


def test_both_sources_are_admin_token_sources(ssm: Any) -> None:
    sources: list[AdminTokenSource] = [
        EnvironmentAdminTokenSource("a"),
        SsmAdminTokenSource(ssm, NAME, 60),
    ]
    ssm.put_parameter(Name=NAME, Value="b", Type="SecureString")
    assert [s.admin_token() for s in sources] == ["a", "b"]
    assert replace(settings(), admin_token="x").admin_token_parameter == ""
