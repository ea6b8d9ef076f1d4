"""Fuzzing POST /task on the local server: every answer is 2xx or 4xx JSON, every accepted task reads back."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from local.process import LocalSystem
from tests.strategies import expected_x, same_json, submit_bodies

pytestmark = pytest.mark.e2e

EXAMPLES = 200
CONTENT_TYPES = st.sampled_from(
    [None, "application/json", "application/json; charset=utf-8", "application/vnd.api+json", "text/plain", ""]
)


def test_any_submit_body_on_the_local_server_gets_a_json_answer_below_500(
    local_system: Callable[..., LocalSystem],
) -> None:
    system = local_system(PQH_TASK_SECONDS="0", PQH_CAPACITY="2")
    session = requests.Session()
    accepted: dict[str, Any] = {}
    statuses: Counter[int] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=submit_bodies(), content_type=CONTENT_TYPES)
    def submit(body: bytes, content_type: str | None) -> None:
        headers = {} if content_type is None else {"Content-Type": content_type}
        response = session.post(f"{system.base_url}/task", data=body, headers=headers, timeout=30)
        statuses[response.status_code] += 1
        assert 200 <= response.status_code < 500 and not 300 <= response.status_code < 400, (body, response.text)
        assert response.headers["Content-Type"].startswith("application/json")
        answer = response.json()
        if response.status_code == 202:
            accepted[answer["task_id"]] = expected_x(body)
        else:
            assert set(answer) == {"error", "message"} and answer["message"], (body, answer)

    submit()
    print(f"fuzz, local server: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert statuses[202] > 0 and sum(statuses.values()) > statuses[202]
    for result in system.wait_all(list(accepted), timeout=300):
        assert result["task_status"] == "SUCCESS", result
        assert same_json(result["task_result"]["input_x"], accepted[result["task_id"]]), result
