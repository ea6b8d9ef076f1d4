"""Request parsing on its own: what is accepted as written, what is refused, with which code and message.

The routes' tests (functional, fuzz, schemathesis) go through the HTTP layer; these
pin each rule at its edge, with the message a client reads.
"""

from __future__ import annotations

import json

import pytest

from chalicelib.domain import ForbiddenError, PayloadTooLargeError, UnsupportedMediaTypeError, ValidationError
from chalicelib.validation import (
    MAX_USER_ID_BYTES,
    check_content_type,
    check_idempotency_key,
    check_user_id,
    is_task_id,
    nesting,
    parse_json_object,
    parse_submission,
    parse_weight,
    path_parameter,
)


def refused(error: pytest.ExceptionInfo[ValidationError]) -> tuple[int, str, str]:
    return error.value.status, error.value.code, str(error.value)


# --- Content-Type ---------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "", "application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "application/vnd.x+json"],
)
def test_json_content_types_and_none_are_accepted(content_type: str | None) -> None:
    check_content_type(content_type)


@pytest.mark.parametrize("content_type", ["text/plain", "application/jsonx", "multipart/form-data; boundary=x"])
def test_other_content_types_are_415_naming_the_type(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as error:
        check_content_type(content_type)
    media = content_type.split(";")[0]
    assert error.value.status == 415
    assert str(error.value) == (
        f"Content-Type {media!r} is not supported; send the body as JSON with 'Content-Type: application/json'"
    )


# --- The body -------------------------------------------------------------------


def test_a_json_object_is_parsed_as_sent() -> None:
    assert parse_json_object(b'{"x": [1, 2.5, null], "user_id": "u"}', None, 100) == {
        "x": [1, 2.5, None],
        "user_id": "u",
    }


def test_a_body_at_the_limit_is_read_and_one_byte_more_is_413() -> None:
    body = b'{"x": "' + b"a" * 10 + b'"}'  # 19 bytes
    assert parse_json_object(body, None, len(body)) == {"x": "aaaaaaaaaa"}
    with pytest.raises(PayloadTooLargeError) as error:
        parse_json_object(body, None, len(body) - 1)
    assert (error.value.status, str(error.value)) == (
        413,
        "the body is 19 bytes; the limit is 18 bytes (PQH_MAX_BODY_BYTES)",
    )


@pytest.mark.parametrize("body", [None, b"", b"  \n\t"])
def test_an_empty_body_is_400_with_an_example(body: bytes | None) -> None:
    with pytest.raises(ValidationError) as error:
        parse_json_object(body, None, 100)
    assert refused(error) == (
        400,
        "invalid_json",
        'the body is empty; send a JSON object such as {"x": "foo", "user_id": "user_1"}',
    )


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"x": NaN}', b'{"x": Infinity}', b'{"x": -Infinity}', b'{"x": 1e999}', b"\xff\xfe", b"{'x': 1}"],
)
def test_what_is_not_strict_json_is_400_invalid_json(body: bytes) -> None:
    with pytest.raises(ValidationError) as error:
        parse_json_object(body, None, 100)
    status, code, message = refused(error)
    assert (status, code) == (400, "invalid_json")
    assert message.startswith("the body is not valid UTF-8 JSON: ")


@pytest.mark.parametrize(("body", "kind"), [(b"[1]", "list"), (b'"x"', "str"), (b"3", "int"), (b"null", "NoneType")])
def test_a_body_that_is_not_an_object_is_400_naming_what_it_is(body: bytes, kind: str) -> None:
    with pytest.raises(ValidationError) as error:
        parse_json_object(body, None, 100)
    assert refused(error) == (
        400,
        "invalid_body",
        f"the body must be a JSON object with 'x' and 'user_id', not a JSON {kind}",
    )


def nested(depth: int) -> bytes:
    return b'{"x": ' + b"[" * depth + b"]" * depth + b"}"


def test_x_may_nest_64_levels_and_not_65() -> None:
    assert nesting(json.loads(nested(64))["x"]) == 64
    parse_json_object(nested(64), None, 10_000)
    with pytest.raises(ValidationError) as error:
        parse_json_object(nested(65), None, 10_000)
    assert refused(error) == (
        400,
        "invalid_json",
        "the body nests 66 levels deep; the limit is 65 ('x' may nest 64 levels)",
    )


def test_nesting_far_past_the_parser_is_a_400_not_a_crash() -> None:
    with pytest.raises(ValidationError) as error:
        parse_json_object(nested(200_000), None, 10**7)
    status, code, message = refused(error)
    assert (status, code) == (400, "invalid_json")
    assert "the limit is 65" in message


def test_nesting_counts_arrays_and_objects_not_scalars() -> None:
    assert nesting("text") == 0
    assert nesting([]) == 1
    assert nesting({"a": [1, {"b": 2}]}) == 3
    assert nesting([[1], [[2]], 3]) == 3


@pytest.mark.parametrize("body", [b'{"x": "\\ud800"}', b'{"x": ["ok", {"\\udfff": 1}]}', b'{"\\ud83d": 1}'])
def test_a_lone_surrogate_anywhere_is_400(body: bytes) -> None:
    with pytest.raises(ValidationError) as error:
        parse_json_object(body, None, 100)
    status, code, message = refused(error)
    assert (status, code) == (400, "invalid_json")
    assert message.startswith("the body has a lone surrogate escape")


def test_a_surrogate_pair_is_one_character_and_accepted() -> None:
    assert parse_json_object(b'{"x": "\\ud83d\\ude00"}', None, 100) == {"x": "\U0001f600"}


# --- user_id ----------------------------------------------------------------------


@pytest.mark.parametrize("user_id", ["u", "team a", "José", "中文用户", "a/b+%#", " lead", "🙂"])
def test_a_user_id_is_kept_exactly_as_sent(user_id: str) -> None:
    assert check_user_id(user_id, 128) == user_id


@pytest.mark.parametrize(
    ("user_id", "message"),
    [
        (7, "'user_id' must be a string, not int"),
        (None, "'user_id' must be a string, not NoneType"),
        ("", "'user_id' must not be empty"),
        ("   ", "'user_id' must not be empty"),
        ("a\nb", "'user_id' must not contain control characters"),
        ("a\x7fb", "'user_id' must not contain control characters"),
        ("a\x85", "'user_id' must not contain control characters"),
        ("\ud800", "'user_id' must not contain control characters"),
    ],
)
def test_a_bad_user_id_is_400_saying_why(user_id: object, message: str) -> None:
    with pytest.raises(ValidationError) as error:
        check_user_id(user_id, 128)
    assert refused(error) == (400, "invalid_user_id", message)


def test_a_user_id_may_be_as_long_as_the_setting_and_no_longer() -> None:
    assert check_user_id("a" * 5, 5) == "aaaaa"
    with pytest.raises(ValidationError) as error:
        check_user_id("a" * 6, 5)
    assert str(error.value) == "'user_id' is 6 characters; the limit is 5 (PQH_MAX_USER_ID_LENGTH)"


def test_a_user_id_over_dynamodbs_key_size_is_refused_by_bytes() -> None:
    assert MAX_USER_ID_BYTES == 2048
    assert check_user_id("é" * 1024, 1024) == "é" * 1024  # 2,048 bytes in UTF-8: the largest key
    with pytest.raises(ValidationError) as error:
        check_user_id("é" * 1024 + "a", 1025)
    assert str(error.value) == "'user_id' is 2049 bytes in UTF-8; the limit is 2048 (a DynamoDB key's)"


# --- POST /task ----------------------------------------------------------------------


def submission(data: object) -> bytes:
    return json.dumps(data).encode()


def test_a_submission_gives_its_user_and_x() -> None:
    assert parse_submission(submission({"user_id": "u", "x": {"a": 1}}), None, 1000, 128) == ("u", {"a": 1})
    assert parse_submission(submission({"user_id": "u", "x": None}), None, 1000, 128) == ("u", None)


def test_without_user_id_or_x_it_is_400_naming_the_missing_field() -> None:
    with pytest.raises(ValidationError) as error:
        parse_submission(submission({"x": 1}), None, 1000, 128)
    assert refused(error) == (400, "missing_user_id", "the body has no 'user_id'; say who is submitting the task")
    with pytest.raises(ValidationError) as error:
        parse_submission(submission({"user_id": "u"}), None, 1000, 128)
    assert refused(error) == (
        400,
        "missing_x",
        "the body has no 'x'; put the task's input in 'x' (any JSON value, null included)",
    )


def test_x_is_measured_as_json_in_utf8() -> None:
    # "é" * 5 as JSON in UTF-8: two quotes and five 2-byte characters, 12 bytes.
    assert parse_submission(submission({"user_id": "u", "x": "é" * 5}), None, 1000, 128, max_x_bytes=12)[1] == "ééééé"
    with pytest.raises(PayloadTooLargeError) as error:
        parse_submission(submission({"user_id": "u", "x": "é" * 5}), None, 1000, 128, max_x_bytes=11)
    assert str(error.value) == "'x' is 12 bytes as JSON; the limit is 11 bytes (PQH_MAX_X_BYTES)"


def test_with_an_api_key_the_caller_is_the_user() -> None:
    assert parse_submission(submission({"x": 1}), None, 1000, 128, caller="alice") == ("alice", 1)
    assert parse_submission(submission({"x": 1, "user_id": "alice"}), None, 1000, 128, caller="alice") == ("alice", 1)
    with pytest.raises(ForbiddenError) as error:
        parse_submission(submission({"x": 1, "user_id": "bob"}), None, 1000, 128, caller="alice")
    assert str(error.value) == "this API key belongs to 'alice'; it cannot submit for another user"


# --- Idempotency-Key, weight, path parameters, task ids -------------------------------


@pytest.mark.parametrize("key", ["a", "!", "~", "k" * 255, "order-17/retry:2"])
def test_visible_ascii_idempotency_keys_of_1_to_255_are_kept(key: str) -> None:
    assert check_idempotency_key(key) == key


def test_no_idempotency_key_is_none() -> None:
    assert check_idempotency_key(None) is None


@pytest.mark.parametrize("key", ["", " ", "k" * 256, "a b", "é", "a\tb", "a\x7f"])
def test_other_idempotency_keys_are_400(key: str) -> None:
    with pytest.raises(ValidationError) as error:
        check_idempotency_key(key)
    assert refused(error) == (
        400,
        "invalid_idempotency_key",
        "the Idempotency-Key header must be 1 to 255 visible ASCII characters",
    )


@pytest.mark.parametrize(("weight", "expected"), [(1, 1), (7, 7), (1000, 1000)])
def test_a_weight_from_one_to_the_maximum_is_accepted(weight: int, expected: int) -> None:
    assert parse_weight(submission({"weight": weight}), None, 1000) == expected


@pytest.mark.parametrize("weight", [0, -1, 1001, True, 2.0, "3", None])
def test_any_other_weight_is_400_naming_the_range(weight: object) -> None:
    with pytest.raises(ValidationError) as error:
        parse_weight(submission({"weight": weight}), None, 1000)
    assert refused(error) == (
        400,
        "invalid_weight",
        f"'weight' must be an integer from 1 to 1000 (PQH_MAX_WEIGHT), got {weight!r}",
    )


@pytest.mark.parametrize(
    ("raw", "meant"),
    [("team%20a", "team a"), ("a%2Fb", "a/b"), ("100%25", "100%"), ("a+b", "a+b"), ("Jos%C3%A9", "José"), ("u", "u")],
)
def test_a_path_parameter_is_decoded_once(raw: str, meant: str) -> None:
    assert path_parameter(raw, "user id") == meant
    assert path_parameter("50%2525", "user id") == "50%25"  # once, not twice


def test_a_path_parameter_that_is_not_utf8_is_400() -> None:
    with pytest.raises(ValidationError) as error:
        path_parameter("%C3%28", "user id")
    assert refused(error) == (400, "invalid_path", "the user id in the path is not percent-encoded UTF-8")


def test_task_ids_are_lowercase_uuids() -> None:
    assert is_task_id("0f8fad5b-d9cb-469f-a165-70867728950e")
    assert not is_task_id("0F8FAD5B-D9CB-469F-A165-70867728950E")
    assert not is_task_id("0f8fad5b-d9cb-469f-a165-70867728950e0")
    assert not is_task_id("x0f8fad5b-d9cb-469f-a165-70867728950e")
    assert not is_task_id("")


# --- Edges a mutation run left unguarded ----------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"), [(b'{"x": NaN}', "NaN is not valid JSON"), (b'{"x": 1e999}', "1e999 is out of range")]
)
def test_the_json_error_names_the_offending_token(body: bytes, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        parse_json_object(body, None, 100)


def test_parameters_after_the_media_type_do_not_matter() -> None:
    check_content_type("application/json; charset=utf-8; profile=x")
    with pytest.raises(UnsupportedMediaTypeError):
        check_content_type("text/plain; note=application/json")


def test_every_body_parser_checks_the_content_type() -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        parse_json_object(b'{"x": 1}', "text/plain", 100)
    with pytest.raises(UnsupportedMediaTypeError):
        parse_submission(submission({"user_id": "u", "x": 1}), "text/plain", 1000, 128)
    with pytest.raises(UnsupportedMediaTypeError):
        parse_weight(submission({"weight": 2}), "text/plain", 1000)


def test_the_surrogate_message_says_what_to_send_instead() -> None:
    with pytest.raises(ValidationError) as error:
        parse_json_object(b'{"x": "\\ud800"}', None, 100)
    assert str(error.value) == (
        "the body has a lone surrogate escape (such as \\ud800): JSON strings must be Unicode text; "
        "send characters outside the BMP as a surrogate pair or as UTF-8"
    )


def test_a_long_user_id_is_refused_with_the_user_id_code() -> None:
    with pytest.raises(ValidationError) as error:
        check_user_id("a" * 6, 5)
    assert error.value.code == "invalid_user_id"
    with pytest.raises(ValidationError) as error:
        check_user_id("é" * 1025, 2000)
    assert error.value.code == "invalid_user_id"


def test_x_defaults_to_32_kib_as_json() -> None:
    x = "a" * (32768 - 2)  # with its quotes: 32,768 bytes
    assert parse_submission(submission({"user_id": "u", "x": x}), None, 10**6, 128)[1] == x
    with pytest.raises(PayloadTooLargeError):
        parse_submission(submission({"user_id": "u", "x": x + "a"}), None, 10**6, 128)


def test_a_weight_body_may_be_4_kib() -> None:
    body = b'{"weight": 3, "pad": "' + b"a" * (4096 - 24) + b'"}'
    assert len(body) == 4096
    assert parse_weight(body, None, 1000) == 3
    with pytest.raises(PayloadTooLargeError):
        parse_weight(body[:-2] + b'a"}', None, 1000)
