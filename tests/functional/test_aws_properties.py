"""AWS's documented parameter rules, as properties: whatever passes validation is sent as AWS accepts it.

Over user ids (any string validation accepts, up to PQH_MAX_USER_ID_LENGTH at its
largest) and payloads (any JSON, up to PQH_MAX_X_BYTES at its largest), every
AWS call of the submit, the dispatcher, the worker and the routes is checked by
the harness's before-call hook (tests/aws_rules.py: group ids, key and item
sizes, message sizes, batch sizes). Each id also goes through every route that
takes one in its path and comes back as the same user.

The examples are few (each is a dozen moto calls), so the suite stays fast.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from chalicelib.domain import ValidationError
from chalicelib.settings import load
from chalicelib.validation import check_user_id
from tests.functional.conftest import Harness, admin_token_in_ssm

ADMIN = {"Authorization": "Bearer t", "Content-Type": "application/json"}
# No shrinking: an example is a dozen moto calls (some move 128 KiB), so shrinking a
# failure would take minutes; the failing example is printed as found.
FEW = settings(
    max_examples=25,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Characters of every UTF-8 width, URL syntax and spaces among them.
WIDE = st.sampled_from(["a", "Z", "0", " ", "/", "%", "#", "+", "?", "é", "ß", "中", "🙂", "\U0001d518", "\u00a0"])


def valid(user_id: str, max_length: int) -> bool:
    try:
        check_user_id(user_id, max_length)
    except ValidationError:
        return False
    return True


def longest_valid_prefix(user_id: str, max_length: int) -> str:
    while user_id and not valid(user_id, max_length):
        user_id = user_id[:-1]
    return user_id


def user_ids(max_length: int) -> st.SearchStrategy[str]:
    """Any id validation accepts: short and arbitrary, or as long as validation lets it be, in wide characters."""
    anything = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=max_length)
    wide = st.text(WIDE, min_size=max_length, max_size=max_length)
    four_bytes = st.text(st.sampled_from(["🙂", "\U0001d518", "𠀋"]), min_size=max_length, max_size=max_length)
    longest = st.one_of(wide, four_bytes).map(lambda u: longest_valid_prefix(u, max_length))
    return st.one_of(anything.filter(lambda u: valid(u, max_length)), longest).filter(bool)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def path(user_id: str) -> str:
    return "/admin/users/" + quote(user_id, safe="")


def round_trip(harness: Harness, user_id: str, weight: int) -> None:
    """The path routes reach the user the body named; a key issued for them is revoked by its id in a path."""
    before = harness.client.http.get(path(user_id), headers=ADMIN)
    assert before.status_code == 200, before.body
    count = before.json_body["count_in_window"]
    submitted = harness.submit(user_id, 1)
    assert submitted.status_code == 202, submitted.body
    assert submitted.json_body["user_id"] == user_id
    put = harness.client.http.put(path(user_id) + "/weight", headers=ADMIN, body=json.dumps({"weight": weight}))
    assert put.status_code == 200, put.body
    got = harness.client.http.get(path(user_id), headers=ADMIN).json_body
    assert (got["user_id"], got["count_in_window"], got["weight"]) == (user_id, count + 1, weight)
    task_id = submitted.json_body["task_id"]
    result = harness.client.http.get("/result/" + quote(task_id, safe=""))
    assert result.status_code == 200 and result.json_body["task_id"] == task_id
    issued = harness.client.http.post("/admin/keys", headers=ADMIN, body=json.dumps({"user_id": user_id}))
    assert issued.status_code == 201 and issued.json_body["user_id"] == user_id, issued.body
    key_id = issued.json_body["key_id"]
    revoked = harness.client.http.delete("/admin/keys/" + quote(key_id, safe=""), headers=ADMIN)
    assert revoked.json_body == {"revoked": key_id}


@pytest.fixture
def admin(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    admin_token_in_ssm(monkeypatch, "t")


def test_any_valid_user_id_is_sent_as_aws_accepts_and_reaches_the_same_user(harness: Harness, admin: None) -> None:
    max_length = load().max_user_id_length

    @FEW
    @given(user_id=user_ids(max_length), weight=st.integers(1, 1000))
    def check(user_id: str, weight: int) -> None:
        round_trip(harness, user_id, weight)
        assert harness.rules.violations == []

    check()


def test_the_largest_ids_and_payloads_the_settings_allow_are_sent_as_aws_accepts(
    harness: Harness, admin: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the settings' upper bounds: the longest user ids, the largest bodies, run to the end."""
    monkeypatch.setenv("PQH_MAX_USER_ID_LENGTH", "1024")
    monkeypatch.setenv("PQH_MAX_BODY_BYTES", "131072")
    monkeypatch.setenv("PQH_MAX_X_BYTES", "131072")
    limits = load()
    ids = user_ids(limits.max_user_id_length)
    char_counts = st.integers(0, limits.max_x_bytes // 4 - 64)

    @settings(FEW, max_examples=10)
    @given(user_id=ids, x=JSON_VALUES, wide=WIDE, n=char_counts)
    def check(user_id: str, x: Any, wide: str, n: int) -> None:
        big = [x, wide * n]  # within PQH_MAX_X_BYTES whatever the width
        body = json.dumps({"user_id": user_id, "x": big}, ensure_ascii=False).encode()
        response = harness.client.http.post("/task", headers={"Content-Type": "application/json"}, body=body)
        if len(body) > limits.max_body_bytes:
            assert response.status_code == 413
            return
        assert response.status_code == 202, response.body
        harness.dispatch()
        outcomes = harness.outcomes()  # this task, and the last example's round trip
        assert outcomes and set(outcomes) == {"SUCCESS"}  # its result (x again) is stored too
        round_trip(harness, user_id, 2)
        assert harness.rules.violations == []

    check()


def test_any_number_of_queued_tasks_is_received_and_deleted_in_batches_aws_accepts(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    @settings(FEW, max_examples=8)
    @given(users=st.lists(st.sampled_from(["a", "b c", "é", "🙂"]), min_size=1, max_size=30), sample=st.integers(1, 10))
    def check(users: list[str], sample: int) -> None:
        monkeypatch.setenv("PQH_FAIR_SAMPLE", str(sample))
        for user_id in users:
            assert harness.submit(user_id, 1).status_code == 202
        harness.dispatch()
        assert sorted(harness.outcomes()) == ["SUCCESS"] * len(users)
        assert harness.rules.violations == []

    check()
