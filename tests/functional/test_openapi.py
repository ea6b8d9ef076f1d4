"""The published OpenAPI description names exactly the app's routes."""

from __future__ import annotations

import json

from app import app
from tests.functional.conftest import Harness


def test_openapi_json_describes_every_route_and_nothing_else(harness: Harness) -> None:
    response = harness.client.http.get("/openapi.json")
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    spec = json.loads(response.body)
    assert spec["openapi"].startswith("3.")
    described = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    served = {(path, method) for path, entries in app.routes.items() for method in entries}
    assert described == served
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op.get("responses"), (path, method)
            params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert params == {part[1:-1] for part in path.split("/") if part.startswith("{")}, (path, method)
