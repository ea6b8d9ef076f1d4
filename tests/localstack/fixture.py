"""The LocalStack tier's fixture: LocalStack's runtime (local/localstack.py), started once per test session.

The tier skips only when the runtime is not installed (`make localstack-venv`) and
PQH_REQUIRE_LOCALSTACK is unset; CI sets it, so there it fails instead. The flag is
read when this module is imported: tests/conftest.py removes every PQH_* variable
before each test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from local.localstack import LocalStackServer, installed
from local.process import free_port

REQUIRED = os.environ.get("PQH_REQUIRE_LOCALSTACK", "").strip() not in ("", "0")


@pytest.fixture(scope="session")
def localstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStackServer]:
    if not installed():
        message = "LocalStack's runtime is not installed: run `make localstack-venv`"
        if REQUIRED:
            pytest.fail(f"{message} (PQH_REQUIRE_LOCALSTACK is set)", pytrace=False)
        pytest.skip(f"{message}; PQH_REQUIRE_LOCALSTACK=1 makes this a failure")
    server = LocalStackServer("127.0.0.1", free_port(), tmp_path_factory.mktemp("localstack"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
