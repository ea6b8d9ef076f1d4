"""Accounts: users' weights and usage, API keys, and who a bearer token is."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets

from chalicelib import policy
from chalicelib.deps import Service
from chalicelib.domain import Identity, IssuedKey, NotFoundError, UserStanding

log = logging.getLogger("pqh")


def key_hash(key: str) -> str:
    """Keys are 256-bit random strings, so a plain SHA-256 is enough to store them."""
    return hashlib.sha256(key.encode()).hexdigest()


class Accounts(Service):
    def set_weight(self, user_id: str, weight: int) -> None:
        s = self.settings
        self.usage.set_weight(user_id, weight, self.clock(), s.bucket_seconds, s.window_seconds)
        log.info("weight user=%s weight=%d", user_id, weight)

    def user_usage(self, user_id: str) -> UserStanding:
        s = self.settings
        count, weight = self.usage.usage(user_id, self.clock(), s.bucket_seconds, s.window_seconds)
        return UserStanding(user_id, count, weight, policy.level_for(count, weight, s.thresholds))

    def issue_key(self, user_id: str, admin: bool = False) -> IssuedKey:
        """A new API key for ``user_id``; only its SHA-256 is stored, so it is shown once."""
        key = "pqh_" + secrets.token_urlsafe(32)
        key_id = key_hash(key)
        self.deps.key_store().put_key(key_id, user_id, admin, self.clock())
        log.info("issued key=%s… user=%s admin=%s", key_id[:12], user_id, admin)
        return IssuedKey(api_key=key, key_id=key_id, user_id=user_id, admin=admin)

    def revoke_key(self, key_id: str) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", key_id) or not self.deps.key_store().delete_key(key_id):
            raise NotFoundError(f"no API key with id {key_id!r}")
        log.info("revoked key=%s…", key_id[:12])

    def admin_token(self) -> str:
        """The admin token now: the SSM parameter's (cached per process) on AWS, else PQH_ADMIN_TOKEN; '' if none."""
        return self.deps.admin_token()

    def authenticate(self, token: str | None) -> Identity | None:
        """Who a bearer token (the header's token, without 'Bearer ') is: the admin token, an issued key, or nobody."""
        token = (token or "").strip()
        if not token:
            return None
        admin_token = self.admin_token()
        if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
            return Identity("admin", admin=True)
        if not token.startswith("pqh_") or len(token) > 200:
            return None
        found = self.deps.key_store().get_key(key_hash(token))
        return Identity(found[0], admin=found[1]) if found else None
