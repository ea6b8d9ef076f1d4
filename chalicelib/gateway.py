"""What API Gateway answers itself, before a route runs: the same JSON shape as the routes' errors.

infra/merge_template.py turns these into the stage's gateway responses, and the
local server (local/gateway.py) answers with them, so a client sees one shape
(``{"error", "message"}``) on AWS and locally alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class GatewayAnswer:
    status: int
    error: str
    message: str

    def body(self) -> bytes:
        return json.dumps({"error": self.error, "message": self.message}).encode()


# By API Gateway's response type. UNAUTHORIZED: no, an empty, or a malformed
# Authorization header (the authorizer raises GatewayUnauthorizedError for the last);
# ACCESS_DENIED: the authorizer denied the key; MISSING_AUTHENTICATION_TOKEN: no
# such route (API Gateway's own 403, answered as the 404 it is).
UNAUTHORIZED = GatewayAnswer(401, "unauthorized", "API keys are on: send 'Authorization: Bearer <your API key>'")
ACCESS_DENIED = GatewayAnswer(403, "forbidden", "this API key is not valid: it is unknown or has been revoked")
NO_ROUTE = GatewayAnswer(404, "not_found", "no such route; GET /openapi.json lists them")
ANSWERS = {"UNAUTHORIZED": UNAUTHORIZED, "ACCESS_DENIED": ACCESS_DENIED, "MISSING_AUTHENTICATION_TOKEN": NO_ROUTE}


class GatewayUnauthorizedError(Exception):
    """Raised by the authorizer: API Gateway answers 401 to an authorizer error whose message is 'Unauthorized'."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")
