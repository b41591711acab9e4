"""Login tokens and session ids: random secrets, stored only as SHA-256 hashes.

A login token reads ``<who>.<secret>``: ``who`` is ``a`` for the admin or the labeler's row id,
``secret`` 32 random bytes (URL-safe base64). The database keeps ``sha256(secret)`` only, so a
leaked database file does not leak working links; a presented token is looked up by ``who`` and
its hash compared with `hmac.compare_digest` (constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ADMIN = "a"


def new_secret() -> str:
    """32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of a secret (what the database stores)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def same_hash(secret: str, stored_hash: str | None) -> bool:
    """Whether ``secret`` hashes to ``stored_hash``, compared in constant time."""
    if stored_hash is None:
        hmac.compare_digest(hash_secret(secret), "0" * 64)  # same work either way
        return False
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def make_token(who: str | int, secret: str) -> str:
    """The login token ``<who>.<secret>``."""
    return f"{who}.{secret}"


def split_token(token: str) -> tuple[str, str] | None:
    """``(who, secret)`` of a well-formed token, else None (too long, bad characters)."""
    if len(token) > 128 or token.count(".") != 1:
        return None
    who, secret = token.split(".")
    if not (who == ADMIN or (who.isdecimal() and len(who) <= 12)):
        return None
    if not 20 <= len(secret) <= 100 or not all(c.isalnum() or c in "-_" for c in secret):
        return None
    return who, secret
