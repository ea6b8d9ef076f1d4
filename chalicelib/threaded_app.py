"""A Chalice app whose request belongs to the thread serving it.

Chalice keeps ``app.current_request`` and ``app.lambda_context`` as plain attributes
of the one app object. On Lambda a process serves one request at a time, so that is
safe; the local server and Chalice's test client serve several at once on threads,
where one request's handler would read another's body and headers.
"""

from __future__ import annotations

import threading
from typing import Any

from chalice.app import Chalice, Request


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
