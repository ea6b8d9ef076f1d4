"""The CLI's waiting display, against a scripted API (no network)."""

from __future__ import annotations

from typing import Any

import pytest
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
