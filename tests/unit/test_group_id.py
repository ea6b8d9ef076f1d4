"""A user's SQS MessageGroupId: always one AWS accepts, one per user."""

from __future__ import annotations

import re

import pytest

from chalicelib.adapters.sqs import message_group_id

# AWS's rule for MessageGroupId (SendMessage): 1-128 characters of a-z, A-Z, 0-9 and
# the punctuation !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~ (written out here, not borrowed).
AWS_GROUP_ID = re.compile(r"^[A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}$")


@pytest.mark.parametrize("user_id", ["user_1", "a/b", "100%", "x" * 128, "Ünïcode".encode().hex()])
def test_an_id_aws_accepts_is_its_own_group_id(user_id: str) -> None:
    assert message_group_id(user_id) == user_id


@pytest.mark.parametrize("user_id", ["team a", "José", "🙂", "中文", "x" * 129, " ", "tab\u00a0nbsp"])
def test_any_other_id_gets_a_digest_aws_accepts(user_id: str) -> None:
    group_id = message_group_id(user_id)
    assert AWS_GROUP_ID.match(group_id) and group_id != user_id
    assert group_id.startswith("~sha256:") and len(group_id) == 72


def test_an_id_that_looks_like_a_digest_cannot_take_another_users_group() -> None:
    digest_of_team_a = message_group_id("team a")
    # Someone registers the digest itself as their id: it is hashed too, so the groups differ.
    assert message_group_id(digest_of_team_a) != digest_of_team_a
    ids = ["team a", digest_of_team_a, "team_a", "team%20a", "Team a", "team a "]
    assert len({message_group_id(u) for u in ids}) == len(ids)
