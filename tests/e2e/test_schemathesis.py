"""Schemathesis against the local runner, in both auth modes: every check, over 1,000 requests each, no failure.

Every answer must be declared in chalicelib/openapi.json (status, content type,
headers, body schema), no 5xx, valid data accepted and invalid data refused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi import checks

from local.process import LocalSystem

pytestmark = pytest.mark.e2e

PER_OPERATION = 100
ADMIN = "schemathesis-admin"
CHECKS = [
    not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    checks.positive_data_acceptance,
    checks.missing_required_header,
    checks.unsupported_method,
    checks.allow_header_conformance,
    checks.use_after_free,
    checks.ensure_resource_availability,
    checks.ignored_auth,
]

# Valid data may still meet the state it finds: a missing task (404), a finished one
# (409), a reused Idempotency-Key (422), a full queue (429), or a credential that is
# not enough (401, 403). Anything else (a 400, a 5xx) for schema-valid data fails.
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]}}}
)

# Valid requests, and invalid ones (which must be refused with a 4xx).
MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]


def run_every_operation(system: LocalSystem, credentials: list[dict[str, str]]) -> tuple[Counter[int], list[str]]:
    """Generate requests for every operation, each with the next of ``credentials`` (rotating); check each answer."""
    schema = schemathesis.openapi.from_url(f"{system.base_url}/openapi.json", config=CONFIG)
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=PER_OPERATION,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in MODES)))
        def call(case: schemathesis.Case) -> None:
            headers = credentials[sum(statuses.values()) % len(credentials)]
            try:
                response = case.call_and_validate(
                    base_url=system.base_url, session=session, headers=headers, checks=CHECKS, timeout=30
                )
                statuses[response.status_code] += 1
            except Exception as exc:  # a check's failure: collected, every operation still runs
                statuses[-1] += 1
                failures.append(f"{case.method} {case.formatted_path} {headers}: {str(exc)[:600]}")

        call()
    return statuses, failures


def test_no_auth_mode_keeps_its_published_contract(local_system: Callable[..., LocalSystem]) -> None:
    system = local_system(PQH_TASK_SECONDS="0", PQH_CAPACITY="2", PQH_ADMIN_TOKEN=ADMIN)
    # Every other request carries the admin token, so admin routes get past the check too.
    statuses, failures = run_every_operation(system, [{}, {"Authorization": f"Bearer {ADMIN}"}])
    print(f"schemathesis, no-auth mode: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert failures == []
    assert sum(statuses.values()) >= 1000


def test_api_key_mode_keeps_its_published_contract(local_system: Callable[..., LocalSystem]) -> None:
    system = local_system(PQH_TASK_SECONDS="0", PQH_CAPACITY="2", PQH_ADMIN_TOKEN=ADMIN, PQH_AUTH="api_key")
    issued: Any = system.http.post(
        f"{system.base_url}/admin/keys",
        json={"user_id": "schemathesis-user"},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=30,
    ).json()
    credentials = [
        {"Authorization": f"Bearer {issued['api_key']}"},
        {"Authorization": f"Bearer {ADMIN}"},
        {},
    ]
    statuses, failures = run_every_operation(system, credentials)
    print(f"schemathesis, API-key mode: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert failures == []
    assert sum(statuses.values()) >= 1000
