"""The local server as API Gateway stands in front of the routes: body limits first, errors as JSON."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from local.process import LocalSystem

pytestmark = pytest.mark.e2e

BOOT = "boot"


def exchange(base_url: str, head: str, body: bytes = b"", close_write: bool = False) -> tuple[int, dict[str, str], Any]:
    """Send one raw HTTP/1.1 request; return the status, headers and JSON body of the answer."""
    address = urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=60) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        reader = sock.makefile("rb")
        status = int(reader.readline().split()[1])
        headers: dict[str, str] = {}
        while (line := reader.readline().decode().strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        payload = reader.read(int(headers.get("content-length", "0")))
    return status, headers, json.loads(payload) if payload else None


def chunked(data: bytes, size: int = 4096) -> bytes:
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def test_the_local_server_refuses_big_bodies_early_and_answers_every_refusal_as_json(
    local_system: Callable[..., LocalSystem],
) -> None:
    system = local_system(PQH_AUTH="api_key", PQH_ADMIN_TOKEN=BOOT, PQH_TASK_SECONDS="0")
    url = system.base_url
    post = "POST /task HTTP/1.1\nHost: pqh\nContent-Type: application/json\nAuthorization: Bearer boot\n"

    # Content-Length over the limit: refused before a byte of the body is read (only 10 are sent).
    status, headers, body = exchange(url, post + "Content-Length: 100000000\n", b'{"x": 1, "', close_write=True)
    assert (status, body["error"]) == (413, "payload_too_large") and "65536" in body["message"]
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"

    # A chunked body is read, and bounded while it is read.
    small = json.dumps({"x": "chunked", "user_id": "u"}).encode()
    status, _, body = exchange(url, post + "Transfer-Encoding: chunked\n", chunked(small))
    assert status == 202 and body["user_id"] == "u"
    big = json.dumps({"x": "a" * 200_000, "user_id": "u"}).encode()
    status, headers, body = exchange(url, post + "Transfer-Encoding: chunked\n", chunked(big))
    assert (status, body["error"], headers["connection"]) == (413, "payload_too_large", "close")

    for bad in ("Content-Length: abc\n", "Content-Length: -5\n", "Content-Length: 2\nTransfer-Encoding: chunked\n"):
        status, _, body = exchange(url, post + bad, b"{}", close_write=True)
        assert (status, body["error"]) == (400, "invalid_request"), bad

    # Refusals made before a route runs (API Gateway's, on AWS) have the routes' error shape.
    get = "GET /stats HTTP/1.1\nHost: pqh\n"
    for header in ("", "Authorization: \n", f"Authorization: {BOOT}\n", f"Authorization: Basic {BOOT}\n"):
        status, headers, body = exchange(url, get + header)
        assert status == 401 and headers["content-type"] == "application/json", header
        assert set(body) == {"error", "message"} and body["error"] == "unauthorized", header
    status, _, body = exchange(url, get + "Authorization: Bearer pqh_unknown\n")
    assert (status, set(body), body["error"]) == (403, {"error", "message"}, "forbidden")
    status, _, body = exchange(url, "GET /no/such/route HTTP/1.1\nHost: pqh\n")
    assert (status, set(body), body["error"]) == (404, {"error", "message"}, "not_found")
    status, _, body = exchange(url, get + f"Authorization: Bearer {BOOT}\n")
    assert status == 200 and "queues" in body
