"""The CLI's waiting display, against a scripted API (no network)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import responses
from click.testing import CliRunner

from pqhcli.main import Api, cli, describe, follow_with_bar


class ScriptedApi:
    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers
        self.calls = 0

    def call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 202)) -> Any:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return answer


def test_the_progress_bar_follows_the_position_down_to_the_result() -> None:
    answers = [
        {"task_status": "PENDING", "queue_position": 3, "eta_seconds": 3.0},
        {"task_status": "PENDING", "queue_position": 1, "eta_seconds": 1.0},
        {"task_status": "STARTED"},
        {"task_status": "SUCCESS", "task_result": {"r": 1}},
    ]
    api = ScriptedApi(answers)
    body = follow_with_bar(api, "t", every=0)  # type: ignore[arg-type]
    assert body["task_result"] == {"r": 1} and api.calls == 4


def test_describe_shows_position_and_eta() -> None:
    line = describe({"task_status": "PENDING", "queue_position": 4, "eta_seconds": 2.25})
    assert line == "PENDING  position 4 (approx.), starts in ~2.2s"
    assert describe({"task_status": "STARTED", "cancel_requested": True}) == "STARTED  running (cancel requested)"


def test_ids_in_paths_are_sent_percent_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, str]] = []

    def call(self: Api, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((method, path))
        return {"task_status": "CANCELLED", "user_id": "x"}

    monkeypatch.setattr(Api, "call", call)
    runner = CliRunner()
    for args in (["weight", "team a/b%#+é", "6"], ["result", "a b"], ["cancel", "a/b"], ["key", "revoke", "k?1"]):
        assert runner.invoke(cli, args).exit_code == 0, args
    assert sent == [
        ("PUT", "/admin/users/team%20a%2Fb%25%23%2B%C3%A9/weight"),
        ("GET", "/result/a%20b"),
        ("DELETE", "/task/a%2Fb"),
        ("DELETE", "/admin/keys/k%3F1"),
    ]


# --- exit codes, stdout and stderr, --json: the real Api against answers `responses` scripts ---

URL = "http://pqh.test"
TASK = "0b6c3f2e-5d1a-4c3e-9a7f-1e2d3c4b5a69"


@pytest.fixture
def http() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def run(*args: str, sleeps: list[float] | None = None, **env: str) -> Any:
    """`pqh ARGS` with PQH_URL set; stdout and stderr apart; retries record their waits instead of sleeping."""
    recorded = [] if sleeps is None else sleeps
    runner = CliRunner()
    return runner.invoke(cli, list(args), env={"PQH_URL": URL, **env}, obj={"sleep": recorded.append})


def test_submit_prints_only_the_task_id_on_stdout_and_the_sentence_on_stderr(http: Any) -> None:
    http.post(f"{URL}/task", status=202, json={"task_id": TASK, "priority_level": 2, "task_status": "PENDING"})
    done = run("submit", "alice", '"foo"')
    assert (done.exit_code, done.stdout) == (0, TASK + "\n")
    assert done.stderr == f"task {TASK} queued at level 2\n"
    assert json.loads(http.calls[0].request.body) == {"x": "foo", "user_id": "alice"}


def test_json_before_or_after_the_command_prints_the_apis_body_and_nothing_else(http: Any) -> None:
    answer = {"task_id": TASK, "priority_level": 0, "task_status": "PENDING"}
    http.post(f"{URL}/task", status=202, json=answer)
    for args in (["--json", "submit", "alice"], ["submit", "alice", "--json"]):
        done = run(*args)
        assert done.exit_code == 0
        assert json.loads(done.stdout) == {"task_id": TASK, "priority_level": 0, "task_status": "PENDING"}
        assert done.stderr == ""


@pytest.mark.parametrize(
    ("args", "method", "path", "answer"),
    [
        (["result", TASK], "GET", f"/result/{TASK}", {"task_status": "SUCCESS", "task_result": [1, 2]}),
        (["cancel", TASK], "DELETE", f"/task/{TASK}", {"task_id": TASK, "task_status": "CANCELLED"}),
        (["weight", "bob", "6"], "PUT", "/admin/users/bob/weight", {"user_id": "bob", "weight": 6}),
        (["stats"], "GET", "/stats", {"tasks": {"queued": 0}}),
        (["key", "issue", "bob"], "POST", "/admin/keys", {"api_key": "pqh_k", "key_id": "ab", "user_id": "bob"}),
        (["key", "revoke", "ab"], "DELETE", "/admin/keys/ab", {"revoked": "ab"}),
        (["dlq", "show", "1"], "GET", "/admin/dead-letters/1", {"dead_letters": 0, "messages": []}),
        (["dlq", "redrive", "1"], "POST", "/admin/dead-letters/1/redrive", {"redriven": 0, "dropped": 0}),
        (["dlq", "purge", "1", "--yes"], "DELETE", "/admin/dead-letters/1", {"purged": 0}),
    ],
)
def test_every_command_takes_json_and_prints_the_body_as_it_came(
    http: Any, args: list[str], method: str, path: str, answer: dict[str, Any]
) -> None:
    status = 201 if args[:2] == ["key", "issue"] else 200
    http.add(method, URL + path, status=status, json=answer)
    done = run(*args, "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout) == answer
    assert done.stderr == ""


def test_key_issue_prints_the_key_alone_on_stdout(http: Any) -> None:
    http.post(
        f"{URL}/admin/keys", status=201, json={"api_key": "pqh_abc", "key_id": "f00", "user_id": "bob", "admin": 0}
    )
    done = run("key", "issue", "bob", PQH_ADMIN_TOKEN="op")
    assert (done.exit_code, done.stdout, done.stderr) == (0, "pqh_abc\n", "key for bob; id f00\n")
    assert http.calls[0].request.headers["Authorization"] == "Bearer op"


@pytest.mark.parametrize(
    ("status", "error", "exit_code"),
    [
        (400, "invalid_input", 1),
        (409, "conflict", 1),
        (404, "not_found", 5),
        (500, "internal", 6),
        (502, "gateway_error", 6),
    ],
)
def test_each_kind_of_failure_has_its_own_exit_code_and_says_why_on_stderr(
    http: Any, status: int, error: str, exit_code: int
) -> None:
    http.get(f"{URL}/result/{TASK}", status=status, json={"error": error, "message": "because"})
    done = run("result", TASK)
    assert done.exit_code == exit_code
    assert done.stdout == ""
    assert done.stderr == f"pqh: {status} {error}: because\n"


def test_401_and_403_have_their_own_exit_codes_and_say_which_credential_to_set(http: Any) -> None:
    http.get(f"{URL}/stats", status=401, json={"error": "unauthorized", "message": "no token"})
    http.put(f"{URL}/admin/users/bob/weight", status=403, json={"error": "forbidden", "message": "not admin"})
    done = run("stats")
    assert (done.exit_code, done.stdout) == (3, "")
    assert done.stderr == "pqh: 401 unauthorized: no token (set PQH_ADMIN_TOKEN)\n"
    done = run("weight", "bob", "2", PQH_ADMIN_TOKEN="wrong")
    assert (done.exit_code, done.stdout) == (4, "")
    assert done.stderr == "pqh: 403 forbidden: not admin (pqh sent PQH_ADMIN_TOKEN)\n"


def test_with_json_a_failure_is_json_on_stderr_and_stdout_stays_empty(http: Any) -> None:
    http.get(f"{URL}/result/{TASK}", status=404, json={"error": "not_found", "message": "no task"})
    done = run("--json", "result", TASK)
    assert (done.exit_code, done.stdout) == (5, "")
    assert json.loads(done.stderr) == {"error": "not_found", "message": "no task", "status": 404, "exit_code": 5}


def test_an_unreachable_api_is_a_server_error_naming_the_url() -> None:
    done = CliRunner().invoke(cli, ["stats"], env={"PQH_URL": "http://127.0.0.1:9"})
    assert done.exit_code == 6 and done.stdout == ""
    assert done.stderr.startswith("pqh: cannot reach http://127.0.0.1:9 (ConnectionError)")


def test_usage_errors_exit_2_without_calling_the_api(http: Any) -> None:
    assert run("weight", "bob", "heavy").exit_code == 2
    assert run("dlq", "show", "9").exit_code == 2
    assert run("no-such-command").exit_code == 2
    assert len(http.calls) == 0


def test_a_503_is_retried_after_what_retry_after_says(http: Any) -> None:
    busy = {"error": "busy", "message": "retry shortly"}
    http.get(f"{URL}/stats", status=503, json=busy, headers={"Retry-After": "2"})
    http.get(f"{URL}/stats", status=503, json=busy, headers={"Retry-After": "1"})
    http.get(f"{URL}/stats", status=200, json={"tasks": {}})
    sleeps: list[float] = []
    done = run("stats", "--json", sleeps=sleeps)
    assert (done.exit_code, json.loads(done.stdout)) == (0, {"tasks": {}})
    assert sleeps == [2.0, 1.0]
    assert done.stderr == "pqh: 503 from the API; retry 1/3 in 2s\npqh: 503 from the API; retry 2/3 in 1s\n"


def test_retries_are_bounded_and_then_the_last_answer_decides_the_exit_code(http: Any) -> None:
    http.post(
        f"{URL}/task", status=429, json={"error": "too_many_queued", "message": "wait"}, headers={"Retry-After": "5"}
    )
    sleeps: list[float] = []
    done = run("submit", "alice", sleeps=sleeps)
    assert sleeps == [5.0, 5.0, 5.0] and len(http.calls) == 4
    assert done.exit_code == 1 and done.stdout == ""
    assert done.stderr.endswith("pqh: 429 too_many_queued: wait (retry after 5s)\n")


def test_a_submit_sends_one_idempotency_key_on_all_its_retries_and_a_new_one_per_command(http: Any) -> None:
    busy = {"error": "busy", "message": "retry shortly"}
    accepted = {"task_id": TASK, "priority_level": 0, "task_status": "PENDING"}
    http.post(f"{URL}/task", status=503, json=busy, headers={"Retry-After": "1"})
    http.post(f"{URL}/task", status=202, json=accepted)
    http.post(f"{URL}/task", status=202, json=accepted)
    http.post(f"{URL}/task", status=202, json=accepted)
    assert run("submit", "alice", sleeps=[]).exit_code == 0
    assert run("submit", "alice").exit_code == 0
    assert run("submit", "alice", "--idempotency-key", "mine-1").exit_code == 0
    keys = [call.request.headers.get("Idempotency-Key") for call in http.calls]
    assert keys[0] is not None and keys[0] == keys[1]  # the retry is the same submit
    assert keys[2] is not None and keys[2] != keys[0]  # another command, another submit
    assert keys[3] == "mine-1"


def test_a_retry_after_longer_than_the_bound_is_not_waited_for(http: Any) -> None:
    http.get(f"{URL}/stats", status=503, json={"error": "busy", "message": "later"}, headers={"Retry-After": "3600"})
    sleeps: list[float] = []
    done = run("stats", sleeps=sleeps)
    assert (sleeps, len(http.calls), done.exit_code) == ([], 1, 6)


def test_a_waited_task_that_fails_exits_7_with_its_result_on_stdout(http: Any) -> None:
    http.post(f"{URL}/task", status=202, json={"task_id": TASK, "priority_level": 0, "task_status": "PENDING"})
    http.get(f"{URL}/result/{TASK}", json={"task_status": "FAILURE", "task_result": {"error": "boom"}})
    done = run("submit", "alice", "--wait", "--every", "0")
    assert done.exit_code == 7
    assert json.loads(done.stdout) == {"error": "boom"}
    assert done.stderr == f"task {TASK} queued at level 0\nFAILURE\npqh: task {TASK} finished FAILURE\n"


def test_help_names_the_environment_and_the_exit_codes_and_version_prints_it() -> None:
    shown = CliRunner().invoke(cli, ["--help"]).stdout
    for name in ("PQH_URL", "PQH_API_KEY", "PQH_ADMIN_TOKEN"):
        assert name in shown
    for line in ("3  not authenticated (401)", "4  not allowed (403)", "5  not found (404)", "6  server error (5xx)"):
        assert line in shown
    assert CliRunner().invoke(cli, ["--version"]).stdout == "pqh 0.1.0\n"


def test_retry_after_may_be_seconds_or_an_http_date_and_is_1_2_4_without_one() -> None:
    from pqhcli.main import retry_delay

    now = 1796209200.0  # Wed, 02 Dec 2026 11:00:00 GMT
    assert retry_delay("3", 0, now) == 3.0
    assert retry_delay("Wed, 02 Dec 2026 11:00:10 GMT", 0, now) == 10.0
    assert retry_delay("Wed, 02 Dec 2026 10:59:00 GMT", 0, now) == 0.0  # already past
    assert [retry_delay(None, attempt, now) for attempt in range(3)] == [1.0, 2.0, 4.0]
    assert retry_delay("soon", 1, now) == 2.0  # unreadable: as if absent
