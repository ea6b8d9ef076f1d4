"""Lambda adapter: hand a task to the worker and nudge the dispatcher, both asynchronously."""

from __future__ import annotations

import json
from typing import Any

from chalicelib.domain import Handoff


class LambdaInvoker:
    """Invokes the worker and dispatcher functions with InvocationType=Event."""

    def __init__(self, client: Any, worker_function: str, dispatcher_function: str) -> None:
        self._lambda = client
        self._worker = worker_function
        self._dispatcher = dispatcher_function

    def start_worker(self, handoff: Handoff) -> None:
        self._lambda.invoke(
            FunctionName=self._worker, InvocationType="Event", Payload=json.dumps(handoff.to_payload()).encode()
        )

    def trigger_dispatch(self) -> None:
        self._lambda.invoke(FunctionName=self._dispatcher, InvocationType="Event", Payload=b"{}")
