"""A Chalice app whose request belongs to the thread serving it, and whose authorizer runs its middleware.

Chalice keeps ``app.current_request`` and ``app.lambda_context`` as plain attributes
of the one app object. On Lambda a process serves one request at a time, so that is
safe; the local server and Chalice's test client serve several at once on threads,
where one request's handler would read another's body and headers.

Chalice runs its middleware around every handler but a built-in authorizer, whose
function sees neither the Lambda context nor the middleware; here it sees both.
"""

from __future__ import annotations

import threading
from typing import Any

from chalice.app import Chalice, ChaliceAuthorizer, LambdaFunctionEvent, Request


class PerThreadChalice(Chalice):
    """Chalice with ``current_request`` and ``lambda_context`` kept per thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._per_thread = threading.local()
        super().__init__(*args, **kwargs)

    @property
    def current_request(self) -> Request | None:
        return getattr(self._per_thread, "current_request", None)

    @current_request.setter
    def current_request(self, value: Request | None) -> None:
        self._per_thread.current_request = value

    @property
    def lambda_context(self) -> Any:
        return getattr(self._per_thread, "lambda_context", None)

    @lambda_context.setter
    def lambda_context(self, value: Any) -> None:
        self._per_thread.lambda_context = value

    def _wrap_handler(self, handler_type: str, handler_name: str, user_handler: Any) -> Any:
        if handler_type == "authorizer":
            return MiddlewareAuthorizer(handler_name, user_handler, self)
        return super()._wrap_handler(handler_type, handler_name, user_handler)


class MiddlewareAuthorizer(ChaliceAuthorizer):
    """A built-in authorizer run inside the app's "all" middleware, with ``app.lambda_context`` set."""

    def __init__(self, name: str, func: Any, app: PerThreadChalice, scopes: list[str] | None = None) -> None:
        super().__init__(name, func, scopes)
        self._app = app

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self._app.lambda_context = context

        def respond(_: Any) -> dict[str, Any]:
            return ChaliceAuthorizer.__call__(self, event, context)

        handler = respond
        for middleware in reversed(list(self._app._get_middleware_handlers("all"))):
            handler = _chain(middleware, handler)
        return handler(LambdaFunctionEvent(event, context))


def _chain(middleware: Any, inner: Any) -> Any:
    return lambda event: middleware(event, inner)
