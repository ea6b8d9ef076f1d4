"""The LocalStack tier: the `localstack` fixture is tests/localstack/fixture.py's (shared with the contract suite)."""

from tests.e2e.conftest import local_system  # noqa: F401  (the end-to-end tests' runner fixture)
