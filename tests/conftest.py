"""Shared fixtures: no test ever reaches a real AWS endpoint."""

from __future__ import annotations

import os

import pytest

from chalicelib import observability, wiring
from tests.localstack.fixture import localstack  # noqa: F401  (the LocalStack tier's fixture)


@pytest.fixture(autouse=True)
def _isolated_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """An AWS_ENDPOINT_URL bypasses moto's mock; fake credentials keep boto3 offline."""
    for name in list(os.environ):
        if name.startswith("AWS_ENDPOINT_URL") or name.startswith("PQH_") or name == "AWS_PROFILE":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    wiring.reset()
    # Metrics wait in one buffer per process for an invocation's flush: what another
    # test on this worker recorded outside one must not show in this test's blobs.
    observability.metrics.discard()
    yield
    wiring.reset()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test`), every test of LocalStack's runtime goes to one worker: it starts once."""
    for item in items:
        if "localstack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("localstack"))
