"""Logs and metrics as CloudWatch reads them: JSON lines on stdout, and EMF blobs flushed per invocation."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import chalice.local
import pytest
from botocore.awsrequest import AWSResponse
from moto.core.botocore_stubber import MockRawResponse

from app import api_key_auth
from chalicelib import aws, observability
from chalicelib.adapters.dynamo import DynamoControlStore
from tests.functional.conftest import Harness

REQUEST_ID = "7e3c1f0a-5b1d-4c55-9a57-1f2e3d4c5b6a"


class FakeContext(chalice.local.LambdaContext):
    """A Lambda context with a request id the test knows."""

    def __init__(self, function_name: str = "api_handler", memory_size: int = 256, **kwargs: Any) -> None:
        super().__init__(function_name, memory_size, **kwargs)
        self.aws_request_id = REQUEST_ID
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:pqh-dev-{function_name}"


def _lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _logs(out: str, message: str | None = None) -> list[dict[str, Any]]:
    return [line for line in _lines(out) if "_aws" not in line and message in (None, line.get("message"))]


def _emf(out: str) -> list[dict[str, Any]]:
    return [line for line in _lines(out) if "_aws" in line]


def _by_level(blobs: list[dict[str, Any]]) -> dict[str | None, dict[str, Any]]:
    """Each blob's metrics (name -> (unit, values)) by its priority_level dimension (None: the stage alone)."""
    found: dict[str | None, dict[str, Any]] = {}
    for blob in blobs:
        (directive,) = blob["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "pqh"
        level = blob.get("priority_level")
        assert directive["Dimensions"] == ([["stage", "priority_level"]] if level is not None else [["stage"]])
        assert blob["stage"] == "dev"
        assert level not in found, "one blob per dimension set and flush"
        found[level] = {m["Name"]: (m["Unit"], blob[m["Name"]]) for m in directive["Metrics"]}
    return found


@pytest.fixture
def metrics_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.delenv("POWERTOOLS_DEV", raising=False)


@pytest.fixture
def throttle_once() -> Iterator[Callable[[str, str, str], None]]:
    """Answer the next call of one operation with AWS's throttling error; botocore retries it.

    moto has answered that call too by then: throttle reads only, or a write would land twice.
    """
    registered: list[tuple[Any, str, Any]] = []

    def install(service: str, operation: str, code: str) -> None:
        left = [1]

        def answer(request: Any, **_: Any) -> AWSResponse | None:
            if not left:
                return None
            left.pop()
            body = json.dumps({"__type": code, "message": "Rate exceeded"}).encode()
            headers = {"x-amzn-errortype": code, "content-type": "application/x-amz-json-1.0"}
            return AWSResponse(request.url, 400, headers, MockRawResponse(body))

        client = aws.client(service)
        event = f"before-send.{service}.{operation}"
        client.meta.events.register_first(event, answer)
        registered.append((client, event, answer))

    yield install
    for client, event, answer in registered:
        client.meta.events.unregister(event, answer)


def test_a_submit_logs_one_json_line_with_the_task_the_user_the_level_and_the_request(
    harness: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chalice.local, "LambdaContext", FakeContext)
    monkeypatch.setattr(observability, "_warm", False)  # this process's first invocation
    first = harness.submit("alice", 1).json_body
    second = harness.submit("alice", 2).json_body

    submitted = _logs(capsys.readouterr().out, "submitted")
    assert len(submitted) == 2
    line = submitted[0]
    assert line["task_id"] == first["task_id"] and submitted[1]["task_id"] == second["task_id"]
    assert line["user_id"] == "alice"
    assert (line["priority_level"], submitted[1]["priority_level"]) == (0, 1)
    assert line["function_request_id"] == REQUEST_ID
    assert line["function_name"] == "api_handler"
    assert (line["cold_start"], submitted[1]["cold_start"]) == (True, False)
    assert line["level"] == "INFO"  # the log level: Powertools' key, which Lambda's log-level filter reads
    assert line["service"] == "pqh" and line["stage"] == "dev"


def test_a_worker_run_emits_one_emf_blob_per_level_with_its_counts_and_times(
    harness: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, metrics_on: None
) -> None:
    monkeypatch.setenv("PQH_TASK_FUNCTION", "chalicelib.tasks.fails_on_poison")
    # One user's counts 0..9: level 0 once, level 1 five times, then level 2 (PQH_LEVEL_THRESHOLDS 1,6,...).
    xs = [0, 1, 2, 3, 4, 5, 6, "poison", 8, 9]
    levels = [harness.submit("alice", x).json_body["priority_level"] for x in xs]
    assert levels == [0, 1, 1, 1, 1, 1, 2, 2, 2, 2]
    capsys.readouterr()
    harness.clock.now += 5.0  # every task waits five seconds

    harness.dispatch()
    capsys.readouterr()
    assert sorted(harness.outcomes()) == ["FAILURE"] + ["SUCCESS"] * 9

    out = capsys.readouterr().out
    assert len(_emf(out)) == 4  # one invocation, one flush: levels 0, 1, 2 and the stage alone
    metrics = _by_level(_emf(out))
    assert metrics["0"] == {
        "TasksStarted": ("Count", [1.0]),
        "TasksSucceeded": ("Count", [1.0]),
        "WaitTime": ("Seconds", [5.0]),
        "RunTime": ("Seconds", [0.0]),
    }
    assert metrics["1"]["TasksStarted"] == ("Count", [5.0])
    assert metrics["1"]["TasksSucceeded"] == ("Count", [5.0])
    assert metrics["1"]["WaitTime"] == ("Seconds", [5.0] * 5)
    assert metrics["2"] == {
        "TasksStarted": ("Count", [4.0]),
        "TasksSucceeded": ("Count", [3.0]),
        "TasksFailed": ("Count", [1.0]),
        "WaitTime": ("Seconds", [5.0] * 4),
        "RunTime": ("Seconds", [0.0] * 4),
    }
    assert metrics[None] == {"DeadLetters": ("Count", [1.0])}

    # Every task event of the run names its task, user and level.
    events = [line for line in _logs(out) if "task_id" in line]
    assert {line["message"] for line in events} == {"dispatched", "started", "succeeded", "failed", "dead-lettered"}
    assert all(line["user_id"] == "alice" and line["priority_level"] in (0, 1, 2) for line in events)
    (failed,) = _logs(out, "failed")
    assert failed["level"] == "WARNING" and failed["status"] == "FAILURE" and "poison" in failed["error"]


def test_submits_flush_their_own_blob_per_request(
    harness: Harness, capsys: pytest.CaptureFixture[str], metrics_on: None
) -> None:
    harness.submit("bob", 1)
    harness.submit("bob", 2)
    blobs = _emf(capsys.readouterr().out)
    assert [(blob["priority_level"], blob["TasksSubmitted"]) for blob in blobs] == [("0", [1.0]), ("1", [1.0])]


def test_a_request_without_metrics_prints_no_blob_and_no_warning(
    harness: Harness, capsys: pytest.CaptureFixture[str], metrics_on: None, recwarn: pytest.WarningsRecorder
) -> None:
    assert harness.client.http.get("/stats").status_code == 200
    captured = capsys.readouterr()
    assert _emf(captured.out) == [] and "metrics" not in captured.err.lower()
    assert [str(w.message) for w in recwarn if "metric" in str(w.message).lower()] == []


def test_the_dispatcher_counts_a_slot_claim_it_lost_and_a_throttle(
    harness: Harness,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    metrics_on: None,
    throttle_once: Callable[[str, str, str], None],
) -> None:
    harness.submit("alice", 1)
    capsys.readouterr()
    claim = DynamoControlStore.claim_slot

    def another_dispatcher_first(self: DynamoControlStore, slot_id: int, holder: str, now: float, until: float) -> bool:
        claim(self, slot_id, "another-dispatcher", now, until)  # a real conditional write, just before ours
        return claim(self, slot_id, holder, now, until)

    monkeypatch.setattr(DynamoControlStore, "claim_slot", another_dispatcher_first)
    throttle_once("dynamodb", "BatchGetItem", "ProvisionedThroughputExceededException")

    assert harness.dispatch()["workers_started"] == 0
    out = capsys.readouterr().out
    assert _by_level(_emf(out)) == {None: {"SlotClaimsLost": ("Count", [1.0]), "Throttles": ("Count", [1.0])}}
    (throttled,) = _logs(out, "AWS throttled a call")
    assert throttled["level"] == "WARNING"
    assert (throttled["aws_service"], throttled["operation"]) == ("dynamodb", "BatchGetItem")
    assert throttled["error_code"] == "ProvisionedThroughputExceededException"
    assert throttled["function_name"] == "dispatcher" and throttled["function_request_id"]


def test_the_worker_counts_a_pick_that_lost_its_race_and_a_throttle(
    harness: Harness,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    metrics_on: None,
    throttle_once: Callable[[str, str, str], None],
) -> None:
    harness.submit("alice", 1)
    harness.dispatch()
    commit = DynamoControlStore.commit_pick
    lost: list[int] = []

    def another_pick_first(self: DynamoControlStore, state: Any, after: Any, takes: Any, tallies: Any) -> Any:
        if not lost:  # another worker's pick moved the backlog record on: this write fails its condition
            lost.append(1)
            return False, self.backlog()
        return commit(self, state, after, takes, tallies)

    monkeypatch.setattr(DynamoControlStore, "commit_pick", another_pick_first)
    # A read, as moto answers the request as well before the throttle is returned (a write would land twice).
    throttle_once("dynamodb", "GetItem", "ProvisionedThroughputExceededException")  # the backlog, at the stop
    capsys.readouterr()

    assert harness.outcomes() == ["SUCCESS"]
    metrics = _by_level(_emf(capsys.readouterr().out))
    assert metrics[None] == {"PickRacesLost": ("Count", [1.0]), "Throttles": ("Count", [1.0])}
    assert metrics["0"]["TasksSucceeded"] == ("Count", [1.0])


def test_the_authorizer_logs_with_its_lambda_context(
    harness: Harness, capsys: pytest.CaptureFixture[str], throttle_once: Callable[[str, str, str], None]
) -> None:
    throttle_once("dynamodb", "GetItem", "ThrottlingException")
    event = {"type": "TOKEN", "authorizationToken": "Bearer pqh_unknown", "methodArn": "arn:aws:execute-api:x"}
    answer = api_key_auth(event, FakeContext("api_key_auth"))
    assert answer["principalId"] == "anonymous"
    (throttled,) = _logs(capsys.readouterr().out, "AWS throttled a call")
    assert throttled["function_name"] == "api_key_auth" and throttled["function_request_id"] == REQUEST_ID


def test_the_terminal_shows_one_readable_line_per_event() -> None:
    formatter = observability.ReadableFormatter()
    record = observability.logger._logger.makeRecord(
        "pqh",
        20,
        __file__,
        1,
        "started",
        (),
        None,
        extra={
            "task_id": "t-1",
            "user_id": "alice",
            "priority_level": 2,
            "queue": 2,
            "wait_seconds": 0.5,
            "note": "a b",
        },
    )
    line = formatter.format(record)
    assert line.endswith(' pqh started task=t-1 user=alice level=2 wait_seconds=0.5 note="a b"')
    assert "{" not in line
