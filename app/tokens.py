"""API tokens, the store: made, revoked, listed, read from GANFORGE_API_TOKENS and verified.

A token is `gf_<prefix>_<secret>`. Only its SHA-256 is stored; the prefix (not secret) finds
the row, then the digests are compared with `hmac.compare_digest`. Used by the settings, the
CLI (`ganforge token ...`) and app.auth's request checks; no FastAPI here.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import timedelta

from sqlalchemy import Connection, exists, insert, select, update
from sqlalchemy.orm import Session

from app.models import ApiToken, utcnow

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")
_TOKEN = re.compile(r"^gf_([A-Za-z0-9]{8})_([A-Za-z0-9_-]{20,100})$")
_LAST_USED_EVERY = timedelta(minutes=5)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenError(ValueError):
    pass


def create_token(conn: Connection, name: str) -> str:
    """Store a new token's digest under `name` and return the token (shown once)."""
    if not NAME_PATTERN.match(name):
        raise TokenError(
            "name: 1 to 100 characters, letters, digits and _ . @ -, starting with a letter "
            "or digit"
        )
    if conn.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise TokenError(f"name: a token named {name!r} exists (names are not reused)")
    prefix = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))
    token = f"gf_{prefix}_{secrets.token_urlsafe(32)}"
    conn.execute(
        insert(ApiToken).values(name=name, prefix=prefix, sha256=digest(token), created_at=utcnow())
    )
    return token


def revoke_token(conn: Connection, name: str) -> bool:
    """Revoke by name; False when there is no such token or it was already revoked."""
    result = conn.execute(
        update(ApiToken)
        .where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(result.rowcount)


def parse_env_tokens(raw: str) -> list[tuple[str, str]]:
    """`GANFORGE_API_TOKENS`: comma-separated `NAME=TOKEN` or `NAME=sha256:HEX`, as
    (name, SHA-256 hex) pairs. A ValueError names the entry that is wrong."""
    out: list[tuple[str, str]] = []
    for i, entry in enumerate((e.strip() for e in raw.split(",")), start=1):
        if not entry:
            continue
        name, sep, secret = entry.partition("=")
        if not sep or not NAME_PATTERN.match(name) or not secret:
            raise ValueError(f"entry {i}: expected NAME=TOKEN or NAME=sha256:HEX")
        if secret.startswith("sha256:"):
            hexdigest = secret.removeprefix("sha256:").lower()
            if not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
                raise ValueError(f"entry {i} ({name}): sha256: needs 64 hex digits")
        elif len(secret) < 20:
            raise ValueError(f"entry {i} ({name}): a token of at least 20 characters")
        else:
            hexdigest = digest(secret)
        out.append((name, hexdigest))
    return out


def tokens_exist(conn: Connection | Session, env: list[tuple[str, str]] | None = None) -> bool:
    if env:
        return True
    return bool(conn.scalar(select(exists().where(ApiToken.id.is_not(None)))))


class TokenRefused(Exception):
    """A presented token that is not good; the message says why (not valid, revoked)."""


def verify_token(session: Session, token: str, env: list[tuple[str, str]] | None = None) -> str:
    """The name of the token presented, else TokenRefused naming why. `env`: the (name,
    digest) pairs of GANFORGE_API_TOKENS, each compared in constant time."""
    presented = digest(token)
    for name, expected_env in env or ():
        if hmac.compare_digest(presented, expected_env):
            return name
    match = _TOKEN.match(token)
    row = (
        session.scalar(select(ApiToken).where(ApiToken.prefix == match.group(1))) if match else None
    )
    # Compare even when nothing was found, so the time taken does not tell which it was.
    expected = row.sha256 if row is not None else "0" * 64
    if not hmac.compare_digest(presented, expected) or row is None:
        raise TokenRefused("the token is not valid")
    if row.revoked_at is not None:
        raise TokenRefused(f"the token {row.name!r} was revoked")
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > _LAST_USED_EVERY:
        session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
        session.commit()
    return row.name
