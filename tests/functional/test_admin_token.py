"""The admin token from the stage's SSM parameter (moto).

It opens admin routes, the variable alone does not, and a rotation is taken up
once the cached value is older than its max age.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from aws_lambda_powertools.utilities.parameters import base as parameters_base

from tests.functional.conftest import Harness, admin_token_in_ssm, stage_env

MAX_AGE = 300  # Settings.admin_token_max_age


class ParameterClock:
    """Moves the clock Powertools' parameter cache reads (datetime.now) by hand: no sleeping."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = timedelta()
        clock = self

        class Shifted(datetime):
            @classmethod
            def now(cls, tz: object = None) -> Shifted:  # type: ignore[override]
                return super().now() + clock.offset  # type: ignore[return-value]

        monkeypatch.setattr(parameters_base, "datetime", Shifted)

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def status(harness: Harness, token: str) -> int:
    return int(harness.client.http.get("/admin/users/u", headers={"Authorization": f"Bearer {token}"}).status_code)


def test_the_token_in_ssm_opens_admin_routes_and_the_variable_alone_does_not(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PQH_ADMIN_TOKEN", "from-the-environment")
    admin_token_in_ssm(monkeypatch, "from-ssm")
    assert status(harness, "from-ssm") == 200
    assert status(harness, "from-the-environment") == 403
    assert harness.client.http.get("/stats").status_code == 401  # operator views need it too
    assert harness.client.http.get("/stats", headers={"Authorization": "Bearer from-ssm"}).status_code == 200


def test_a_rotated_token_is_taken_up_after_the_cache_max_age(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ParameterClock(monkeypatch)
    admin_token_in_ssm(monkeypatch, "first")
    assert status(harness, "first") == 200
    admin_token_in_ssm(monkeypatch, "second")  # an operator overwrites the parameter
    clock.advance(MAX_AGE - 10)
    assert (status(harness, "first"), status(harness, "second")) == (200, 403)  # cached: one read per max age
    clock.advance(20)
    assert (status(harness, "first"), status(harness, "second")) == (403, 200)


def test_a_parameter_named_but_missing_is_a_misconfiguration_not_an_open_door(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PQH_ADMIN_TOKEN_PARAMETER", stage_env()["PQH_ADMIN_TOKEN_PARAMETER"])  # never put
    monkeypatch.setenv("PQH_ADMIN_TOKEN", "from-the-environment")
    response = harness.client.http.get("/admin/users/u", headers={"Authorization": "Bearer from-the-environment"})
    assert response.status_code == 500 and response.json_body["error"] == "misconfigured"
    assert harness.client.http.get("/stats").status_code == 500
