"""End to end on LocalStack's SQS: the local system with SQS on LocalStack and DynamoDB on dynalite.

The setup the README gives for LocalStack (AWS_ENDPOINT_URL_SQS alone), driven over
HTTP as a user would. LocalStack's SQS checks what moto lets through (MessageGroupId
on standard queues: refused before LocalStack 4.7, and its characters as AWS
documents them), so a submit that AWS would refuse fails here too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from local.localstack import LocalStackServer
from local.process import ROOT, LocalSystem, free_port

pytestmark = [pytest.mark.localstack, pytest.mark.e2e]


def test_tasks_submitted_over_http_run_through_localstacks_sqs(
    localstack: LocalStackServer, local_system: Callable[..., LocalSystem]
) -> None:
    sqs_url = localstack.endpoint("sqs")
    system = local_system(AWS_ENDPOINT_URL_SQS=sqs_url, PQH_CAPACITY="2", PQH_TASK_SECONDS="0.01")
    log = system.log_path.read_text()
    assert f"SQS {sqs_url}\n" in log and "(embedded dynalite)" in log

    # Ids that AWS's SQS refuses as a MessageGroupId (a space, a non-ASCII letter, an
    # emoji) submit like any other: the group id is derived from the user id.
    sent = [(user, f"{user}-{i}") for i in range(4) for user in ("heavy", "team a", "José 🙂")]
    sent += [("heavy", f"heavy-{i}") for i in range(4, 10)]
    submitted = {system.submit(user, x)["task_id"]: (user, x) for user, x in sent}
    done = system.wait_all(list(submitted), timeout=120)
    assert {t["task_status"] for t in done} == {"SUCCESS"}
    assert {t["task_id"]: t["task_result"]["input_x"] for t in done} == {k: x for k, (_, x) in submitted.items()}
    assert system.stop() == 0

    # The queues live in LocalStack, one per level and a dead-letter queue each.
    prefix = next(line.split("prefix ")[1].rstrip(")") for line in log.splitlines() if "(prefix " in line)
    sqs = localstack.session().client("sqs")
    names = sorted(url.rsplit("/", 1)[1] for url in sqs.list_queues(QueueNamePrefix=prefix)["QueueUrls"])
    assert names == sorted([f"{prefix}-level-{n}" for n in range(6)] + [f"{prefix}-level-{n}-dlq" for n in range(6)])
    for name in names:
        attributes = sqs.get_queue_attributes(
            QueueUrl=sqs.get_queue_url(QueueName=name)["QueueUrl"], AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        assert attributes["ApproximateNumberOfMessages"] == "0", name


def test_everything_on_localstack_stops_at_once_naming_its_dynamodb(
    localstack: LocalStackServer, tmp_path: Path
) -> None:
    """The README's old recipe, AWS_ENDPOINT_URL alone: LocalStack's DynamoDB does not run here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ENDPOINT_URL", "PQH_"))}
    env.update(
        AWS_ENDPOINT_URL=localstack.url,
        PQH_PORT=str(free_port()),
        PQH_EMULATOR_PORT=str(free_port()),
        PQH_SQS_EMULATOR_PORT=str(free_port()),
    )
    run = subprocess.run(
        [sys.executable, "-m", "local.run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
    )
    output = run.stdout + run.stderr
    assert run.returncode == 2, output
    (line,) = [line for line in output.splitlines() if f"DynamoDB at {localstack.url}" in line]
    assert "AWS_ENDPOINT_URL_SQS" in line
    assert "Traceback" not in output
