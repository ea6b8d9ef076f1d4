"""Fuzzing POST /task through chalice.test.Client on moto: 2xx or 4xx JSON only; accepted tasks read back."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings

from tests.functional.conftest import Harness
from tests.strategies import expected_x, same_json, submit_bodies

EXAMPLES = 300


def test_any_submit_body_gets_a_json_answer_below_500_and_accepted_tasks_read_back(harness: Harness) -> None:
    accepted: dict[str, Any] = {}
    statuses: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=submit_bodies())
    def submit(body: bytes) -> None:
        response = harness.client.http.post("/task", headers={"Content-Type": "application/json"}, body=body)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert 200 <= response.status_code < 500 and not 300 <= response.status_code < 400, (body, response.body)
        answer = json.loads(response.body)
        if response.status_code == 202:
            accepted[answer["task_id"]] = expected_x(body)
        else:
            assert set(answer) == {"error", "message"} and answer["message"], (body, answer)

    submit()
    assert statuses.get(202, 0) > 0 and sum(n for s, n in statuses.items() if s != 202) > 0
    harness.dispatch()
    harness.run_workers()
    for task_id, x in accepted.items():
        response = harness.result(task_id)
        assert response.status_code == 200, (task_id, response.body)
        result = json.loads(response.body)
        assert result["task_status"] == "SUCCESS", result
        assert same_json(result["task_result"]["input_x"], x), (x, result)
