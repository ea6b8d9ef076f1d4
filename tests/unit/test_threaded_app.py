"""Two requests served at once on two threads each see their own body (the local server serves on threads)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from chalice.app import Chalice
from chalice.config import Config
from chalice.local import LocalGateway

from chalicelib.threaded_app import PerThreadChalice


def serve_two_at_once(app: Chalice) -> list[Any]:
    both_inside = threading.Barrier(2, timeout=10)

    @app.route("/echo", methods=["POST"])
    def echo() -> dict[str, Any]:
        both_inside.wait()  # each request has set the app's current request before either reads it
        request = app.current_request
        assert request is not None
        return {"got": request.json_body["n"]}

    gateway = LocalGateway(app, Config())

    def call(n: int) -> Any:
        response = gateway.handle_request(
            method="POST",
            path="/echo",
            headers={"content-type": "application/json"},
            body=json.dumps({"n": n}).encode(),
        )
        return json.loads(response["body"])["got"]

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(call, [1, 2]))


def test_each_request_reads_its_own_body() -> None:
    assert serve_two_at_once(PerThreadChalice(app_name="t")) == [1, 2]


def test_plain_chalice_hands_one_requests_body_to_the_other() -> None:
    # Why PerThreadChalice exists: with Chalice's plain attribute, both read the last one set.
    got = serve_two_at_once(Chalice(app_name="t"))
    assert got[0] == got[1]


def test_the_app_is_per_thread() -> None:
    from app import app

    assert isinstance(app, PerThreadChalice)
    app.current_request = None
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(app.current_request))
    app.lambda_context = "here"
    thread.start()
    thread.join()
    assert seen == [None] and app.lambda_context == "here"


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
