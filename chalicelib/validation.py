"""Request parsing: every rejection is a 4xx with a message a person can act on."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

from chalicelib.domain import ForbiddenError, PayloadTooLargeError, UnsupportedMediaTypeError, ValidationError

# DynamoDB's limit for a partition key value: a user id is one (usage table, queued-by-user index).
MAX_USER_ID_BYTES = 2048
TASK_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# Arrays and objects in 'x' nest at most this deep. A record holds x one level down
# (the default result's input_x) and a response one more: far below what Python's
# JSON reader and the idempotency utility can walk back, so every record reads back.
MAX_X_DEPTH = 64
MAX_BODY_DEPTH = MAX_X_DEPTH + 1  # the body is the object that holds 'x'
SURROGATES = re.compile("[\ud800-\udfff]")


class _Invalid(ValidationError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range for a JSON number")
    return value


def check_content_type(content_type: str | None) -> None:
    """JSON bodies only; a missing header is read as JSON (old clients sent none)."""
    if not content_type:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaTypeError(
            f"Content-Type {media!r} is not supported; send the body as JSON with 'Content-Type: application/json'"
        )


def parse_json_object(raw_body: bytes | None, content_type: str | None, max_bytes: int) -> dict[str, Any]:
    check_content_type(content_type)
    body = raw_body or b""
    if len(body) > max_bytes:
        raise PayloadTooLargeError(
            f"the body is {len(body)} bytes; the limit is {max_bytes} bytes (PQH_MAX_BODY_BYTES)"
        )
    if not body.strip():
        raise _Invalid(
            "invalid_json", 'the body is empty; send a JSON object such as {"x": "foo", "user_id": "user_1"}'
        )
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Invalid("invalid_json", f"the body is not valid UTF-8 JSON: {exc}") from exc
    except RecursionError as exc:
        raise _Invalid(
            "invalid_json",
            f"the body nests too deeply to parse; the limit is {MAX_BODY_DEPTH} levels ('x' may nest {MAX_X_DEPTH})",
        ) from exc
    check_text(data, MAX_BODY_DEPTH)
    if not isinstance(data, dict):
        raise _Invalid(
            "invalid_body", f"the body must be a JSON object with 'x' and 'user_id', not a JSON {type(data).__name__}"
        )
    return data


def nesting(value: Any) -> int:
    """How deep arrays and objects nest in a parsed JSON value (a scalar is 0); no recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _strings(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            yield from item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def check_text(data: Any, max_depth: int) -> None:
    """Refuse what could be stored but not read back: deep nesting, lone surrogates (not Unicode text)."""
    depth = nesting(data)
    if depth > max_depth:
        raise _Invalid(
            "invalid_json",
            f"the body nests {depth} levels deep; the limit is {max_depth} ('x' may nest {max_depth - 1} levels)",
        )
    for text in _strings(data):
        if SURROGATES.search(text):
            raise _Invalid(
                "invalid_json",
                "the body has a lone surrogate escape (such as \\ud800): JSON strings must be Unicode text; "
                "send characters outside the BMP as a surrogate pair or as UTF-8",
            )


def check_user_id(user_id: Any, max_length: int) -> str:
    if not isinstance(user_id, str):
        raise _Invalid("invalid_user_id", f"'user_id' must be a string, not {type(user_id).__name__}")
    if not user_id.strip():
        raise _Invalid("invalid_user_id", "'user_id' must not be empty")
    if len(user_id) > max_length:
        raise _Invalid(
            "invalid_user_id",
            f"'user_id' is {len(user_id)} characters; the limit is {max_length} (PQH_MAX_USER_ID_LENGTH)",
        )
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in user_id):
        raise _Invalid("invalid_user_id", "'user_id' must not contain control characters")
    size = len(user_id.encode("utf-8"))
    if size > MAX_USER_ID_BYTES:
        raise _Invalid(
            "invalid_user_id",
            f"'user_id' is {size} bytes in UTF-8; the limit is {MAX_USER_ID_BYTES} (a DynamoDB key's)",
        )
    return user_id


def parse_submission(
    raw_body: bytes | None,
    content_type: str | None,
    max_bytes: int,
    max_user_id_length: int,
    max_x_bytes: int = 32768,
    caller: str | None = None,
) -> tuple[str, Any]:
    """Return (user_id, x) from a POST /task body, or raise a 4xx error.

    With API keys, ``caller`` is the key's user: the body's user_id may be left
    out, and if given it must be the caller's.
    """
    data = parse_json_object(raw_body, content_type, max_bytes)
    if caller is not None:
        if "user_id" in data and data["user_id"] != caller:
            raise ForbiddenError(f"this API key belongs to {caller!r}; it cannot submit for another user")
        user_id = caller
    elif "user_id" not in data:
        raise _Invalid("missing_user_id", "the body has no 'user_id'; say who is submitting the task")
    else:
        user_id = check_user_id(data["user_id"], max_user_id_length)
    if "x" not in data:
        raise _Invalid("missing_x", "the body has no 'x'; put the task's input in 'x' (any JSON value, null included)")
    size = len(json.dumps(data["x"], ensure_ascii=False).encode())
    if size > max_x_bytes:
        raise PayloadTooLargeError(f"'x' is {size} bytes as JSON; the limit is {max_x_bytes} bytes (PQH_MAX_X_BYTES)")
    return user_id, data["x"]


IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")


def check_idempotency_key(value: str | None) -> str | None:
    """An Idempotency-Key header: 1-255 visible ASCII characters, or absent."""
    if value is None:
        return None
    if not IDEMPOTENCY_KEY_RE.match(value):
        raise _Invalid(
            "invalid_idempotency_key", "the Idempotency-Key header must be 1 to 255 visible ASCII characters"
        )
    return value


def parse_weight(raw_body: bytes | None, content_type: str | None, max_weight: int) -> int:
    data = parse_json_object(raw_body, content_type, 4096)
    weight = data.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= max_weight:
        raise _Invalid(
            "invalid_weight", f"'weight' must be an integer from 1 to {max_weight} (PQH_MAX_WEIGHT), got {weight!r}"
        )
    return weight


def path_parameter(raw: str, name: str) -> str:
    """A path parameter as the client meant it: percent-decoded exactly once.

    Chalice's local server and test client pass path parameters as the client sent
    them (still percent-encoded), and so do API Gateway REST APIs to a Lambda proxy
    integration; the runtime does not decode them either. ``+`` is a plus sign in
    a path (not a space).
    """
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise _Invalid("invalid_path", f"the {name} in the path is not percent-encoded UTF-8") from exc


def is_task_id(value: str) -> bool:
    return bool(TASK_ID_RE.match(value))
