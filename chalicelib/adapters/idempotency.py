"""Idempotent submits: AWS Lambda Powertools' idempotency utility on the tasks table.

A record ``idem#<hash of (user_id, Idempotency-Key)>`` holds the first answer
until ``expires_at`` (the tasks table's TTL attribute; Powertools also compares it
with now, so a late TTL changes nothing). The same key with another ``x`` is
refused; the same key while the first request is still running is refused too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyValidationError,
)

from chalicelib.domain import IdempotencyConflictError, IdempotencyMismatchError

_REPLAYED = "__pqh_replayed__"


class PowertoolsIdempotency:
    def __init__(self, client: Any, table: str, expires_after_seconds: int) -> None:
        store = DynamoDBPersistenceLayer(
            table_name=table,
            key_attr="task_id",  # the tasks table's key; records are "idem#...", never a task id
            expiry_attr="expires_at",
            boto3_client=client,
        )
        self._config = IdempotencyConfig(
            event_key_jmespath="[user_id, key]",
            payload_validation_jmespath="x",
            expires_after_seconds=expires_after_seconds,
            response_hook=lambda response, record: {**response, _REPLAYED: True},
        )
        self._local = threading.local()

        @idempotent_function(  # type: ignore[untyped-decorator]
            data_keyword_argument="request", persistence_store=store, config=self._config, key_prefix="idem"
        )
        def once(request: dict[str, Any]) -> dict[str, Any]:
            return dict(self._local.action())

        self._once = once

    def run(
        self, user_id: str, key: str, x: Any, action: Callable[[], dict[str, Any]], lambda_context: Any = None
    ) -> tuple[dict[str, Any], bool]:
        """Run ``action`` once per (user_id, key); return (its answer, whether this was a replay)."""
        if lambda_context is not None and hasattr(lambda_context, "get_remaining_time_in_millis"):
            # A request that dies mid-way frees its key when the invocation would have timed out.
            self._config.register_lambda_context(lambda_context)
        self._local.action = action
        try:
            answer = self._once(request={"user_id": user_id, "key": key, "x": x})
        except IdempotencyAlreadyInProgressError as exc:
            raise IdempotencyConflictError(
                "a request with this Idempotency-Key is still being handled; retry in a moment"
            ) from exc
        except IdempotencyValidationError as exc:
            raise IdempotencyMismatchError(
                "this Idempotency-Key was used with a different 'x'; use a new key for a new task"
            ) from exc
        finally:
            self._local.action = None
        replayed = bool(answer.pop(_REPLAYED, False))
        return answer, replayed
