"""LocalStack's runtime as the tier starts it: on loopback only, with the services pqh needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from local.localstack import LocalStackServer

pytestmark = pytest.mark.localstack


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the IPv4 sockets listening on ``port`` (Linux's /proc/net/tcp)."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
            addresses.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return addresses


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_it_listens_on_loopback_alone(localstack: LocalStackServer) -> None:
    # Its default server (twisted) would bind every interface, whatever GATEWAY_LISTEN says.
    assert listening_addresses(localstack.port) == {"127.0.0.1"}


def test_the_services_pqh_needs_are_available_and_dynamodb_is_not_there(localstack: LocalStackServer) -> None:
    health = localstack.health()
    states = health["services"]
    for service in ("sqs", "iam", "sts", "lambda", "apigateway", "events", "cloudformation"):
        assert states[service] in ("available", "running"), service
    assert states["dynamodb"] == "disabled"
    assert health["version"] == "4.14.0"  # requirements-localstack.txt; the compose file's tag
