"""pqh entry points: HTTP routes, the scheduled dispatcher, and the Lambda functions.

Each handler parses its input, calls one service, and turns the result or a
domain error into a response. Policy and AWS calls live in chalicelib.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError, ProxyConnectionError, SSLError
from botocore.exceptions import ConnectionError as AwsConnectionError
from chalice.app import AuthRequest, AuthResponse, Rate, Request, Response

from chalicelib import observability, views, wiring
from chalicelib.domain import (
    ForbiddenError,
    Handoff,
    Identity,
    PqhError,
    TooManyQueuedError,
    UnauthorizedError,
    UnavailableError,
    ValidationError,
)
from chalicelib.gateway import GatewayUnauthorizedError
from chalicelib.settings import ConfigError, auth_mode
from chalicelib.threaded_app import PerThreadChalice
from chalicelib.validation import (
    check_idempotency_key,
    check_user_id,
    parse_json_object,
    parse_submission,
    parse_weight,
    path_parameter,
)

# Per thread: the local server and the test client serve requests on several threads.
# Logs: chalicelib.observability's Powertools Logger owns the "pqh" logger (app.log).
app = PerThreadChalice(app_name="pqh", configure_logs=False)
app.log.setLevel(logging.INFO)
# Every function (routes, the authorizer, the schedule, the Lambdas): the request id
# and cold start on its log lines, its metrics flushed when it returns.
app.register_middleware(observability.chalice_middleware, "all")

THROTTLING = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestThrottled",  # SQS
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "InternalServerError",
    "InternalFailure",
}


def _error(status: int, code: str, message: str, headers: dict[str, str | list[str]] | None = None) -> Response:
    return Response(status_code=status, body={"error": code, "message": message}, headers=headers or {})


def _request() -> Request:
    request = app.current_request
    assert request is not None, "called outside a request"
    return request


def _body(request: Request) -> bytes:
    raw = request.raw_body
    return raw.encode() if isinstance(raw, str) else bytes(raw or b"")


def api_errors(view: Callable[..., Any]) -> Callable[..., Any]:
    """Map domain errors to 4xx JSON; AWS throttling, and AWS out of reach, to 503 with Retry-After."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return view(*args, **kwargs)
        except TooManyQueuedError as exc:
            return _error(exc.status, exc.code, str(exc), {"Retry-After": str(exc.retry_after)})
        except UnavailableError as exc:
            app.log.warning("%s", exc)
            return _unavailable()
        except PqhError as exc:
            return _error(exc.status, exc.code, str(exc))
        except ConfigError as exc:
            app.log.error("misconfigured: %s", exc)
            return _error(500, "misconfigured", "the service is misconfigured; its operators have been told")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in THROTTLING:
                app.log.warning("AWS is throttling: %s", exc)
                return _error(503, "busy", "the service is busy; retry shortly", {"Retry-After": "1"})
            raise
        except (SSLError, ProxyConnectionError):
            raise  # a certificate or proxy setting is wrong: retrying will not help (a 500, logged)
        except (AwsConnectionError, HTTPClientError) as exc:
            # No answer from DynamoDB or SQS after botocore's own retries (a connection
            # refused or cut, a timeout). A submit is rolled back (best effort: a write whose
            # answer was lost may have landed); a client retries with its Idempotency-Key.
            app.log.error("AWS could not be reached: %s", exc, exc_info=True)
            return _unavailable()

    return wrapper


def _unavailable() -> Response:
    return _error(
        UnavailableError.status,
        UnavailableError.code,
        "the service is briefly unavailable; retry shortly",
        {"Retry-After": "1"},
    )


def _stage_prefix() -> str:
    """'/api' behind API Gateway's stage path, '' locally: for Location headers."""
    context = _request().context
    path, resource = str(context.get("path", "")), str(context.get("resourcePath", ""))
    if path and resource and path.endswith(resource.rstrip("/") or "/") and "{" not in resource:
        return path[: len(path) - len(resource)].rstrip("/")
    return ""


# --- Identity ---------------------------------------------------------------
# PQH_AUTH=api_key: API Gateway runs the authorizer below before each route that
# carries it, and passes on who the key belongs to. Whether routes carry it is
# decided when this module is imported (a deploy setting: the Lambda environment,
# or `make package`); every handler also checks the mode at run time, so a route
# without the authorizer in api_key mode refuses to serve (401), never serves open.
AUTH_AT_IMPORT = auth_mode(os.environ)


def bearer_token(header: str | None) -> str | None:
    """The token of an 'Authorization: Bearer <token>' header; None when absent, empty or another scheme."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


@app.authorizer(ttl_seconds=60)
def api_key_auth(auth_request: AuthRequest) -> AuthResponse:
    """The key (Authorization: Bearer pqh_...) -> its user; a malformed header is 401, an unknown key 403."""
    token = bearer_token(auth_request.token)
    if token is None:
        raise GatewayUnauthorizedError()
    identity = wiring.services().accounts.authenticate(token)
    if identity is None:
        return AuthResponse(routes=[], principal_id="anonymous")
    # Cached by API Gateway for ttl_seconds per key, for every route: admin rights
    # travel in the context and are checked by the handlers.
    return AuthResponse(
        routes=["*"], principal_id=identity.user_id, context={"admin": "true" if identity.admin else "false"}
    )


AUTHORIZER = api_key_auth if AUTH_AT_IMPORT == "api_key" else None


def _caller() -> Identity | None:
    """The caller in api_key mode (None in no-auth mode, where the body names the user)."""
    if wiring.services().settings.auth != "api_key":
        return None
    context = _request().context.get("authorizer") or {}
    principal = context.get("principalId")
    if not principal:
        raise UnauthorizedError("API keys are on: send 'Authorization: Bearer <your API key>'")
    return Identity(str(principal), admin=context.get("admin") == "true")


def _require_admin() -> None:
    svc = wiring.services()
    settings = svc.settings
    if settings.auth == "api_key":
        caller = _caller()
        if caller is None or not caller.admin:
            raise ForbiddenError("this route needs an admin API key (or PQH_ADMIN_TOKEN)")
        return
    expected = svc.accounts.admin_token()
    if not expected:
        raise ForbiddenError("admin routes are disabled; set PQH_ADMIN_TOKEN to enable them")
    token = bearer_token(_request().headers.get("authorization"))
    if token is None:  # no credential (or not a bearer one): 401; a wrong one: 403
        raise UnauthorizedError("admin routes need 'Authorization: Bearer <PQH_ADMIN_TOKEN>'")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise ForbiddenError(
            "this token is not PQH_ADMIN_TOKEN; admin routes need 'Authorization: Bearer <PQH_ADMIN_TOKEN>'"
        )


def _require_admin_if_configured() -> None:
    """Operator views are open only with no API keys and no admin token (local use)."""
    svc = wiring.services()
    if svc.settings.auth == "api_key" or svc.accounts.admin_token():
        _require_admin()


def _level(raw: str) -> int:
    raw = path_parameter(raw, "level")
    if len(raw) != 1 or not raw.isascii() or not raw.isdigit():
        raise ValidationError(f"level must be 0..5, got {raw!r}")
    return int(raw)


DASHBOARD = Path(__file__).resolve().parent / "chalicelib" / "dashboard.html"
OPENAPI = Path(__file__).resolve().parent / "chalicelib" / "openapi.json"


# --- HTTP routes ------------------------------------------------------------


@app.route("/task", methods=["POST"], content_types=["*/*"], authorizer=AUTHORIZER)
@api_errors
def submit_task() -> Response:
    svc = wiring.services()
    request = _request()
    caller = _caller()
    user_id, x = parse_submission(
        _body(request),
        request.headers.get("content-type"),
        svc.settings.max_body_bytes,
        svc.settings.max_user_id_length,
        svc.settings.max_x_bytes,
        caller=caller.user_id if caller is not None and not caller.admin else None,
    )
    key = check_idempotency_key(request.headers.get("idempotency-key"))
    headers: dict[str, str | list[str]] = {}
    if key is None:
        body = views.submitted(svc.submitting.submit(user_id, x))
    else:
        answer, replayed = svc.submitting.submit_once(user_id, x, key, app.lambda_context)
        body = views.submitted(answer)
        headers["Idempotent-Replayed"] = "true" if replayed else "false"
    headers["Location"] = _stage_prefix() + body["result_url"]
    return Response(status_code=202, body=body, headers=headers)


@app.route("/result/{task_id}", methods=["GET"], authorizer=AUTHORIZER)
@api_errors
def get_result(task_id: str) -> dict[str, Any]:
    svc = wiring.services()
    task = svc.results.result(path_parameter(task_id, "task id"), _caller())
    return views.result(task, svc.results.progress(task))


@app.route("/task/{task_id}", methods=["DELETE"], authorizer=AUTHORIZER)
@api_errors
def cancel_task(task_id: str) -> Response:
    """Cancel a queued task (200), or ask a running one to stop (202)."""
    task = wiring.services().results.cancel(path_parameter(task_id, "task id"), _caller())
    return Response(status_code=202 if task.task_status == "STARTED" else 200, body=views.result(task))


@app.route("/admin/keys", methods=["POST"], content_types=["*/*"], authorizer=AUTHORIZER)
@api_errors
def issue_key() -> Response:
    """Issue an API key for a user (shown once; only its hash is stored)."""
    _require_admin()
    svc = wiring.services()
    request = _request()
    # Room for the longest user id the settings allow, in astral characters as JSON escapes (12 bytes each).
    limit = 4096 + 12 * svc.settings.max_user_id_length
    data = parse_json_object(_body(request), request.headers.get("content-type"), limit)
    user_id = check_user_id(data.get("user_id"), svc.settings.max_user_id_length)
    admin = data.get("admin", False)
    if not isinstance(admin, bool):
        raise ValidationError("'admin' must be true or false")
    return Response(status_code=201, body=views.issued_key(svc.accounts.issue_key(user_id, admin)))


@app.route("/admin/keys/{key_id}", methods=["DELETE"], authorizer=AUTHORIZER)
@api_errors
def revoke_key(key_id: str) -> dict[str, Any]:
    _require_admin()
    key_id = path_parameter(key_id, "key id")
    wiring.services().accounts.revoke_key(key_id)
    return {"revoked": key_id}


@app.route("/admin/users/{user_id}", methods=["GET"], authorizer=AUTHORIZER)
@api_errors
def get_user(user_id: str) -> dict[str, Any]:
    _require_admin()
    svc = wiring.services()
    user_id = check_user_id(path_parameter(user_id, "user id"), svc.settings.max_user_id_length)
    return views.user(svc.accounts.user_usage(user_id))


@app.route("/admin/users/{user_id}/weight", methods=["PUT"], content_types=["*/*"], authorizer=AUTHORIZER)
@api_errors
def put_weight(user_id: str) -> dict[str, Any]:
    _require_admin()
    svc = wiring.services()
    user_id = check_user_id(path_parameter(user_id, "user id"), svc.settings.max_user_id_length)
    request = _request()
    weight = parse_weight(_body(request), request.headers.get("content-type"), svc.settings.max_weight)
    svc.accounts.set_weight(user_id, weight)
    return views.user(svc.accounts.user_usage(user_id))


# --- Operators: stats, dashboard, dead letters ----------------------------------


@app.route("/stats", methods=["GET"], authorizer=AUTHORIZER)
@api_errors
def get_stats() -> dict[str, Any]:
    _require_admin_if_configured()
    return views.stats(wiring.services().operations.stats())


@app.route("/dashboard", methods=["GET"])
def dashboard() -> Response:
    """The page holds no data: it fetches ./stats (which checks the admin token)."""
    return Response(
        status_code=200,
        body=DASHBOARD.read_text(encoding="utf-8"),
        headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-cache"},
    )


@app.route("/openapi.json", methods=["GET"])
def openapi() -> Response:
    """The OpenAPI 3 description of this API (chalicelib/openapi.json; a test keeps it in step with the routes)."""
    return Response(
        status_code=200, body=OPENAPI.read_text(encoding="utf-8"), headers={"Content-Type": "application/json"}
    )


@app.route("/admin/dead-letters/{level}", methods=["GET"], authorizer=AUTHORIZER)
@api_errors
def get_dead_letters(level: str) -> dict[str, Any]:
    _require_admin()
    return views.dead_letters(wiring.services().operations.dead_letters(_level(level)))


@app.route("/admin/dead-letters/{level}/redrive", methods=["POST"], content_types=["*/*"], authorizer=AUTHORIZER)
@api_errors
def redrive_dead_letters(level: str) -> dict[str, Any]:
    _require_admin()
    return dict(wiring.services().operations.redrive(_level(level)))


@app.route("/admin/dead-letters/{level}", methods=["DELETE"], authorizer=AUTHORIZER)
@api_errors
def purge_dead_letters(level: str) -> dict[str, Any]:
    _require_admin()
    return dict(wiring.services().operations.purge_dead_letters(_level(level)))


# --- Dispatcher and worker ----------------------------------------------------


@app.schedule(Rate(1, unit=Rate.MINUTES), name="dispatch_tick")
def dispatch_tick(event: Any) -> dict[str, Any]:
    """The safety net: walks every level once a minute, even ones counted empty.

    It also sends again the messages of tasks queued for half of SQS's retention.
    """
    svc = wiring.services()
    # Dispatch first: the safety net must not depend on the retention refresh's index query.
    report = views.dispatch_report(svc.dispatching.dispatch(full_walk=True))
    try:
        requeued: int | None = svc.operations.refresh_stale()
    except Exception:  # logged; the next tick tries again, long before SQS would drop a message
        app.log.exception("the retention refresh failed; the next tick tries again")
        requeued = None
    return {**report, "requeued": requeued}


@app.lambda_function(name="dispatcher")
def dispatcher(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Invoked asynchronously on every submit and every finished task."""
    return views.dispatch_report(wiring.services().dispatching.dispatch(full_walk=bool((event or {}).get("full_walk"))))


@app.lambda_function(name="worker")
def worker(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Holds a slot handed over by the dispatcher and runs queued tasks, most urgent level first."""
    return views.worker_report(wiring.services().worker.run(Handoff.from_payload(event)))
