"""Credentials: none or malformed is 401, a wrong one 403, and every refusal is the declared {error, message}."""

from __future__ import annotations

import pytest
from chalice.app import AuthRequest

from chalicelib.gateway import GatewayUnauthorizedError
from tests.functional.conftest import Harness, admin_token_in_ssm
from tests.functional.test_api_keys import BOOT, keyed, load_app_with_api_keys  # noqa: F401 (a fixture)

ADMIN_ROUTES = [
    ("get", "/admin/users/u"),
    ("get", "/admin/dead-letters/0"),
    ("post", "/admin/dead-letters/0/redrive"),
    ("get", "/stats"),
]


@pytest.mark.parametrize("header", [None, "", "   ", "s3cret", "Basic s3cret", "Bearer", "Bearer  "])
@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_an_admin_route_without_a_bearer_credential_is_401(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, header: str | None, method: str, path: str
) -> None:
    admin_token_in_ssm(monkeypatch, "s3cret")
    headers = {} if header is None else {"Authorization": header}
    response = getattr(harness.client.http, method)(path, headers=headers)
    assert response.status_code == 401
    assert response.json_body["error"] == "unauthorized" and "Bearer" in response.json_body["message"]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_an_admin_route_with_the_wrong_token_is_403(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, method: str, path: str
) -> None:
    admin_token_in_ssm(monkeypatch, "s3cret")
    response = getattr(harness.client.http, method)(path, headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 403 and response.json_body["error"] == "forbidden"


@pytest.mark.usefixtures("keyed")
@pytest.mark.parametrize("token", ["", "   ", BOOT, f"Basic {BOOT}", "Bearer", "Bearer "])
def test_the_authorizer_refuses_a_header_that_is_not_a_bearer_credential_with_401(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    module = load_app_with_api_keys(monkeypatch)
    with pytest.raises(GatewayUnauthorizedError, match=r"^Unauthorized$"):  # API Gateway's 401
        module.api_key_auth.func(AuthRequest("TOKEN", token, "arn:aws:execute-api:us-east-1:1:api/api/GET/stats"))


@pytest.mark.usefixtures("keyed")
def test_the_authorizer_admits_a_bearer_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_app_with_api_keys(monkeypatch)
    arn = "arn:aws:execute-api:us-east-1:1:api/api/GET/stats"
    admitted = module.api_key_auth.func(AuthRequest("TOKEN", f"bearer {BOOT}", arn))
    assert admitted.principal_id == "admin" and admitted.routes == ["*"]
    denied = module.api_key_auth.func(AuthRequest("TOKEN", "Bearer pqh_unknown", arn))
    assert denied.routes == []
