"""Schemathesis against the local runner: over 1,000 generated requests, not one 5xx."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from local.process import LocalSystem

pytestmark = pytest.mark.e2e

PER_OPERATION = 150
ADMIN = "schemathesis-admin"


def test_generated_requests_never_get_a_server_error(local_system: Callable[..., LocalSystem]) -> None:
    system = local_system(PQH_TASK_SECONDS="0", PQH_CAPACITY="2", PQH_ADMIN_TOKEN=ADMIN)
    schema = schemathesis.openapi.from_url(f"{system.base_url}/openapi.json")
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=PER_OPERATION,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def call(case: schemathesis.Case) -> None:
            # Every other request carries the admin token, so admin routes get past the check too.
            headers = {"Authorization": f"Bearer {ADMIN}"} if sum(statuses.values()) % 2 else None
            response = case.call(base_url=system.base_url, headers=headers, timeout=30)
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                detail = f"{response.status_code}: {response.text[:300]}"
                server_errors.append(f"{case.method} {case.formatted_path} -> {detail}")

        call()
    total = sum(statuses.values())
    print(f"schemathesis: {total} requests, statuses {dict(sorted(statuses.items()))}")
    assert total >= 1000
    assert server_errors == []
