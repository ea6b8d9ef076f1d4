"""The local runner's AWS endpoints: which one each service uses, and a check that each answers.

boto3 picks a service's endpoint from AWS_ENDPOINT_URL_<SERVICE>, else from
AWS_ENDPOINT_URL. The runner asks each service once, with a short timeout and no
retry, before it creates anything, so an endpoint that is down or stuck (LocalStack's
DynamoDB without its downloads) fails at once with a line that names the service and
the endpoint, not minutes later with a ReadTimeout traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import aws

DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Service:
    """An AWS service the runner uses, and the cheapest call that shows it answers."""

    key: str  # boto3's name, and the suffix of AWS_ENDPOINT_URL_<KEY>
    name: str
    operation: str
    params: Mapping[str, Any]


DYNAMODB = Service("dynamodb", "DynamoDB", "ListTables", {"Limit": 1})
SQS = Service("sqs", "SQS", "ListQueues", {"MaxResults": 1})
SERVICES = (DYNAMODB, SQS)


class EndpointError(Exception):
    """A service's endpoint did not answer; the message names the service, the endpoint and what to do."""


def configured(service: Service, env: Mapping[str, str] | None = None) -> str:
    """The endpoint the environment names for ``service`` ("" when none: the runner starts its own)."""
    env = os.environ if env is None else env
    specific = env.get(f"AWS_ENDPOINT_URL_{service.key.upper()}", "").strip()
    return specific or env.get("AWS_ENDPOINT_URL", "").strip()


def _hint(service: Service) -> str:
    if service is DYNAMODB:
        return (
            "LocalStack's DynamoDB needs Java and DynamoDB Local, which it downloads on first use; "
            "to keep DynamoDB on the embedded emulator, unset AWS_ENDPOINT_URL and set only AWS_ENDPOINT_URL_SQS"
        )
    variable = f"AWS_ENDPOINT_URL_{service.key.upper()}"
    return f"start it, or unset {variable} and AWS_ENDPOINT_URL to use the embedded emulator"


def check(service: Service, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Call ``service`` once at its endpoint; return the endpoint, or raise EndpointError."""
    client = aws.probe_client(service.key, timeout)
    url = client.meta.endpoint_url
    try:
        getattr(client, _snake(service.operation))(**service.params)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        reason = " ".join(f"{error.get('Code', 'error')}: {error.get('Message', '')}".split())
        raise EndpointError(
            f"{service.name} at {url} answered {service.operation} with {reason}; {_hint(service)}"
        ) from None
    except BotoCoreError as exc:
        raise EndpointError(
            f"{service.name} at {url} did not answer {service.operation} within {timeout:g}s "
            f"({type(exc).__name__}); {_hint(service)}"
        ) from None
    return str(url)


def _snake(operation: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")
