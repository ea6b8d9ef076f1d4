"""The deploy rehearsal deploys to a LocalStack on this machine and nowhere else."""

from __future__ import annotations

import pytest

from infra.deploy_rehearsal import RehearsalError, check_endpoint


@pytest.mark.parametrize("url", ["http://127.0.0.1:4566", "http://localhost:4566", "http://[::1]:4566"])
def test_a_loopback_endpoint_is_taken(url: str) -> None:
    assert check_endpoint({"AWS_ENDPOINT_URL": url}) == url


@pytest.mark.parametrize("url", ["", "https://lambda.us-east-1.amazonaws.com", "http://10.0.0.5:4566"])
def test_anything_but_a_loopback_endpoint_is_refused(url: str) -> None:
    with pytest.raises(RehearsalError, match="only to a LocalStack on this machine"):
        check_endpoint({"AWS_ENDPOINT_URL": url})


def test_a_service_endpoint_elsewhere_is_refused() -> None:
    with pytest.raises(RehearsalError, match="AWS_ENDPOINT_URL_LAMBDA"):
        check_endpoint({"AWS_ENDPOINT_URL": "http://127.0.0.1:4566", "AWS_ENDPOINT_URL_LAMBDA": "https://x.example"})
