"""Any user id that passes validation works as it would on AWS, through every route.

The harness checks AWS's documented parameter rules on every call (tests/aws_rules.py):
moto itself accepts a MessageGroupId that AWS refuses.
"""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import quote

import pytest
import requests
from chalice.config import Config
from chalice.local import LocalDevServer
from click.testing import CliRunner

from app import app
from pqhcli.main import Api, cli
from tests.functional.conftest import CLIENT_STAGE, ROOT, Harness, admin_token_in_ssm

ADMIN = {"Authorization": "Bearer t", "Content-Type": "application/json"}
# Spaces, non-ASCII letters, emoji, URL syntax, and a string that looks already encoded.
AWKWARD_IDS = [
    "team a",
    "José",
    "🙂",
    "a/b",
    "100%",
    "50%25",
    "#1",
    "a+b",
    "?q=1&r",
    " lead",
    "tab\u00a0nbsp",
    "中文用户",
    "x" * 128,
]


def path_of(user_id: str) -> str:
    """What a client sends: the id percent-encoded as one path segment (as `pqh` does)."""
    return "/admin/users/" + quote(user_id, safe="")


@pytest.fixture
def admin(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    admin_token_in_ssm(monkeypatch, "t")


@pytest.mark.parametrize("user_id", AWKWARD_IDS)
def test_any_valid_user_id_can_submit_and_run(harness: Harness, user_id: str) -> None:
    response = harness.submit(user_id, 1)
    assert response.status_code == 202, response.body
    assert response.json_body["user_id"] == user_id
    harness.dispatch()
    assert harness.outcomes() == ["SUCCESS"]
    assert harness.rules.violations == []


@pytest.mark.parametrize("user_id", AWKWARD_IDS)
def test_the_user_routes_reach_the_user_the_body_names(harness: Harness, admin: None, user_id: str) -> None:
    assert harness.submit(user_id, 1).status_code == 202
    put = harness.client.http.put(path_of(user_id) + "/weight", headers=ADMIN, body=json.dumps({"weight": 6}))
    assert put.status_code == 200, put.body
    assert put.json_body["user_id"] == user_id
    got = harness.client.http.get(path_of(user_id), headers=ADMIN)
    assert got.status_code == 200, got.body
    # The submission through the body and the weight through the path are on one user.
    assert got.json_body == {"user_id": user_id, "count_in_window": 1, "weight": 6, "next_priority_level": 0}
    users = harness.client.http.get("/stats", headers=ADMIN).json_body["users"]
    assert [(u["user_id"], u["weight"]) for u in users] == [(user_id, 6)]


def every_byte_encoded(value: str) -> str:
    """A client may percent-encode even unreserved characters; one decode still gives the id."""
    return "".join(f"%{byte:02X}" for byte in value.encode())


def test_task_and_key_ids_in_paths_are_decoded_once(harness: Harness, admin: None) -> None:
    task_id = harness.submit("u", 1).json_body["task_id"]
    assert harness.client.http.get(f"/result/{every_byte_encoded(task_id)}").json_body["task_id"] == task_id
    issued = harness.client.http.post("/admin/keys", headers=ADMIN, body=json.dumps({"user_id": "u"}))
    assert issued.status_code == 201, issued.body
    key_id = issued.json_body["key_id"]
    revoked = harness.client.http.delete(f"/admin/keys/{every_byte_encoded(key_id)}", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json_body == {"revoked": key_id}
    cancelled = harness.client.http.delete(f"/task/{every_byte_encoded(task_id)}")
    assert cancelled.status_code == 200 and cancelled.json_body["task_status"] == "CANCELLED"


def test_a_path_is_decoded_once_not_twice(harness: Harness, admin: None) -> None:
    # "50%25" sent as "50%2525": decoded once it is the user "50%25", twice it would be "50%".
    harness.submit("50%25", 1)
    harness.submit("50%", 1)
    harness.submit("50%", 1)
    got = harness.client.http.get("/admin/users/50%2525", headers=ADMIN).json_body
    assert (got["user_id"], got["count_in_window"]) == ("50%25", 1)


@pytest.mark.parametrize("user_id", ["team a", "a/b", "50%25", "José"])
def test_pqh_weight_sets_the_weight_of_the_user_it_names(
    harness: Harness, admin: None, monkeypatch: pytest.MonkeyPatch, user_id: str
) -> None:
    def through_the_test_client(self: Api, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        sent = json.dumps(body) if body is not None else ""
        return getattr(harness.client.http, method.lower())(path, headers=ADMIN, body=sent).json_body

    monkeypatch.setattr(Api, "call", through_the_test_client)
    harness.submit(user_id, 1)
    assert CliRunner().invoke(cli, ["weight", user_id, "6"]).exit_code == 0
    got = harness.client.http.get(path_of(user_id), headers=ADMIN).json_body
    assert (got["user_id"], got["count_in_window"], got["weight"]) == (user_id, 1, 6)


def test_a_user_id_longer_than_a_dynamodb_key_is_refused_with_a_400(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PQH_MAX_USER_ID_LENGTH", "1024")
    too_long = harness.submit("🙂" * 513, 1)  # 2052 bytes: DynamoDB takes a key of at most 2048
    assert too_long.status_code == 400 and too_long.json_body["error"] == "invalid_user_id"
    assert "2052 bytes" in too_long.json_body["message"]
    assert harness.submit("🙂" * 512, 1).status_code == 202


def test_a_key_is_issued_for_the_longest_user_id_written_as_json_escapes(harness: Harness, admin: None) -> None:
    user_id = "🙂" * 128  # PQH_MAX_USER_ID_LENGTH's default; 12 bytes a character as "\ud83d\ude42"
    body = json.dumps({"user_id": user_id, "admin": False})
    issued = harness.client.http.post("/admin/keys", headers=ADMIN, body=body)
    assert issued.status_code == 201, issued.body
    assert issued.json_body["user_id"] == user_id


@pytest.mark.parametrize("path", ["/result/%FF", "/task/%C3", "/admin/keys/%E2%82", "/admin/users/%FF%FE"])
def test_an_id_that_is_not_percent_encoded_utf8_is_a_400(harness: Harness, admin: None, path: str) -> None:
    method = "get" if path.startswith(("/result", "/admin/users")) else "delete"
    response = getattr(harness.client.http, method)(path, headers=ADMIN)
    assert response.status_code == 400 and response.json_body["error"] == "invalid_path", response.body


def test_chalice_local_server_passes_the_id_encoded_and_the_route_decodes_it_once(
    harness: Harness, admin: None
) -> None:
    """`make run` serves the API with Chalice's own server: a real HTTP request, as `pqh` sends it."""
    server = LocalDevServer(app, Config.create(chalice_stage=CLIENT_STAGE, project_dir=str(ROOT)), "127.0.0.1", 0)
    threading.Thread(target=server.server.serve_forever, daemon=True).start()
    try:
        harness.submit("team a/b+%", 1)
        url = f"http://127.0.0.1:{server.server.server_port}/admin/users/{quote('team a/b+%', safe='')}"
        got = requests.get(url, headers=ADMIN, timeout=30).json()
    finally:
        server.server.shutdown()
        server.server.server_close()
    assert (got["user_id"], got["count_in_window"]) == ("team a/b+%", 1)
