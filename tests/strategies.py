"""Hypothesis strategies for hostile request bodies: any JSON, any Unicode, numbers at the edges, deep nesting."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import strategies as st

# Every Unicode category, lone surrogates (Cs) included.
ANY_CHAR = st.characters(exclude_categories=())
TEXT = st.text(ANY_CHAR, max_size=40)
EDGE_INTS = st.sampled_from([0, -1, 2**31, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 10**300, -(10**400)])
NUMBERS = st.one_of(
    st.integers(),
    EDGE_INTS,
    st.floats(allow_nan=True, allow_infinity=True),  # NaN and Infinity become the tokens JSON does not allow
    st.sampled_from([0.0, -0.0, 5e-324, 1.7976931348623157e308, 1e-320]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(TEXT, children, max_size=4),
    ),
    max_leaves=12,
)
USER_IDS = st.one_of(
    TEXT,
    st.sampled_from(["u", "fuzz-1", "fuzz-2", " ", "", "a" * 128, "a" * 129, "celery", "\x00", "\u200b"]),
    JSON_VALUES,
)


@st.composite
def nested_text(draw: st.DrawFn) -> str:
    """JSON text of an array or object nested 0 to 3,000 deep (Python's parser gives up near 1,000)."""
    depth = draw(st.one_of(st.integers(0, 70), st.integers(0, 3000)))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"k":', "}")]))
    return opener * depth + "0" + closer * depth


def dump(value: Any, ascii_only: bool) -> bytes:
    """JSON bytes as a client might send them: NaN/Infinity tokens and lone surrogates passed through."""
    text = json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def submit_bodies(draw: st.DrawFn) -> bytes:
    """A POST /task body: mostly a plausible object, sometimes anything at all."""
    kind = draw(st.sampled_from(["object", "object", "object", "nested", "any json", "raw bytes"]))
    ascii_only = draw(st.booleans())
    if kind == "raw bytes":
        return draw(st.binary(max_size=200))
    if kind == "any json":
        return dump(draw(JSON_VALUES), ascii_only)
    user_id = draw(st.one_of(st.sampled_from(["u", "fuzz-1", "fuzz-2"]), USER_IDS))
    if kind == "nested":
        prefix = dump({"user_id": user_id}, ascii_only)[:-1]
        return prefix + b', "x": ' + draw(nested_text()).encode() + b"}"
    body: dict[str, Any] = {"user_id": user_id, "x": draw(JSON_VALUES)}
    if draw(st.booleans()):
        body.update(draw(st.dictionaries(TEXT, JSON_VALUES, max_size=2)))
    return dump(body, ascii_only)


def expected_x(body: bytes) -> Any:
    """What an accepted body's x must read back as (parsed independently of the service)."""
    return json.loads(body.decode("utf-8"))["x"]


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values (bool is not 1; -0.0 equals 0.0 as JSON numbers do)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b
