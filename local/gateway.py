"""The local server's request handler: what API Gateway does in front of the routes on AWS.

* A body is bounded before it is read: a Content-Length over ``PQH_MAX_BODY_BYTES``
  is refused at once (413), and a chunked body is refused as soon as it passes the
  limit while it is read (Chalice's own handler read any Content-Length in full and
  ignored chunked bodies, leaving them in the stream as a next request).
* Refusals made before a route runs (no credential, a denied key, no such route) are
  answered with the routes' ``{"error", "message"}`` shape, as the stage's gateway
  responses do on AWS (chalicelib/gateway.py holds both).
"""

from __future__ import annotations

import json
from typing import Any

from chalice.local import ChaliceRequestHandler, LocalGatewayException

from chalicelib import gateway

CHUNK_LINE_BYTES = 1024  # a chunk-size line, extensions included


class RefusedError(Exception):
    """A request refused before it reaches the routes; the connection is closed after the answer."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error = status, error


class GatewayHandler(ChaliceRequestHandler):
    """Chalice's handler with API Gateway's limits and error shapes, and TCP_NODELAY.

    TCP_NODELAY: it writes headers and body in separate sends; on a kept-alive
    connection, Nagle's algorithm then waits for the client's delayed ACK, about 40 ms a request.
    """

    disable_nagle_algorithm = True
    max_body_bytes = 65536  # set from PQH_MAX_BODY_BYTES by the runner

    def _too_large(self, size: str) -> RefusedError:
        return RefusedError(
            413,
            "payload_too_large",
            f"the body is {size} bytes; the limit is {self.max_body_bytes} bytes (PQH_MAX_BODY_BYTES)",
        )

    def _read_body(self) -> bytes | None:
        length = self.headers.get("content-length")
        encoding = self.headers.get("transfer-encoding", "").strip().lower()
        if encoding:
            if length is not None:
                raise RefusedError(400, "invalid_request", "send Content-Length or Transfer-Encoding, not both")
            if encoding != "chunked":
                raise RefusedError(400, "invalid_request", f"Transfer-Encoding {encoding!r} is not supported")
            return self._read_chunked()
        if length is None:
            return None
        if not length.strip().isdigit():
            raise RefusedError(400, "invalid_request", f"Content-Length {length!r} is not a number of bytes")
        size = int(length)
        if size > self.max_body_bytes:
            raise self._too_large(str(size))
        return self.rfile.read(size) if size else None

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = self.rfile.readline(CHUNK_LINE_BYTES)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise RefusedError(400, "invalid_request", "a chunk of the body has no valid size line") from None
            if size < 0:
                raise RefusedError(400, "invalid_request", "a chunk of the body has a negative size")
            if size == 0:
                while self.rfile.readline(CHUNK_LINE_BYTES).strip():  # trailers, up to the blank line
                    pass
                return bytes(body)
            if len(body) + size > self.max_body_bytes:
                raise self._too_large(f"over {len(body) + size}")
            body += self.rfile.read(size)
            self.rfile.readline(CHUNK_LINE_BYTES)  # the CRLF after the chunk

    def _answer(self, status: int, body: bytes, headers: dict[str, Any] | None = None) -> None:
        self._send_http_response(status, {"Content-Type": "application/json", **(headers or {})}, body)

    def _generic_handle(self) -> None:
        try:
            body = self._read_body()
        except RefusedError as exc:
            self.close_connection = True  # the rest of the body is never read
            refusal = json.dumps({"error": exc.error, "message": str(exc)}).encode()
            self._answer(exc.status, refusal, {"Connection": "close"})
            return
        try:
            response = self.local_gateway.handle_request(
                method=self.command, path=self.path, headers=dict(self.headers), body=body
            )
        except LocalGatewayException as exc:
            self._send_error_response(exc)
            return
        except gateway.GatewayUnauthorizedError:
            self._answer(401, gateway.UNAUTHORIZED.body())
            return
        headers = response["headers"].copy()
        headers.update(response["multiValueHeaders"])
        response = self._handle_binary(response)
        self._send_http_response(response["statusCode"], headers, response["body"])

    # Chalice binds its own _generic_handle to these names: bind this one.
    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _generic_handle

    def _send_error_response(self, error: LocalGatewayException) -> None:
        """API Gateway's own answers, as the stage's gateway responses shape them."""
        kind = error.headers.get("x-amzn-ErrorType", "")
        if error.CODE == 401:
            answer = gateway.UNAUTHORIZED
        elif kind == "AccessDeniedException":
            answer = gateway.ACCESS_DENIED
        elif error.CODE == 403:  # Chalice's stand-in for "Missing Authentication Token": no such route
            answer = gateway.NO_ROUTE
        else:
            super()._send_error_response(error)
            return
        self._answer(answer.status, answer.body())
