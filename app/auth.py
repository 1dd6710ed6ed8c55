"""API tokens: who may change things and download artifacts.

While no token exists the service is open, as on a laptop. Once `ganforge token create NAME`
has made one, every write (any method but GET/HEAD/OPTIONS, unless the endpoint is marked
`@public`) and every artifact download (endpoints marked `@download`) needs
`Authorization: Bearer <token>`. Reads of job state, metrics and the event stream stay open.

A token is `gf_<prefix>_<secret>`. Only its SHA-256 is stored; the prefix (not secret) finds
the row, then the digests are compared with `hmac.compare_digest`. The dashboard keeps the
token in the browser and also sets it as the `ganforge_token` cookie (SameSite=Strict), which
is accepted for downloads (GET) only, so that links and <img> work; a cookie never authorizes
a write, so a cross-site form cannot use it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection, exists, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.models import ApiToken, utcnow

COOKIE = "ganforge_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")
_TOKEN = re.compile(r"^gf_([A-Za-z0-9]{8})_([A-Za-z0-9_-]{20,100})$")
_LAST_USED_EVERY = timedelta(minutes=5)

F = TypeVar("F", bound=Callable[..., Any])


def public(endpoint: F) -> F:
    """Mark a POST that changes nothing (e.g. spec validation): open to everyone."""
    endpoint.__ganforge_access__ = "public"  # type: ignore[attr-defined]
    return endpoint


def download(endpoint: F) -> F:
    """Mark a GET that hands out an artifact's bytes: it needs a token when tokens exist."""
    endpoint.__ganforge_access__ = "download"  # type: ignore[attr-defined]
    return endpoint


def needs_token(method: str, endpoint: Callable[..., Any] | None) -> bool:
    """Whether a request to this endpoint must show a token (when any token exists)."""
    access = getattr(endpoint, "__ganforge_access__", None)
    if method.upper() in SAFE_METHODS:
        return access == "download"
    return access != "public"


# -- tokens -------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Caller:
    """Who made a request: the token's name, or None when the service needs no token."""

    token: str | None


def check_token(session: Session, token: str, env: list[tuple[str, str]] | None = None) -> Caller:
    """The caller a presented token belongs to; HTTPException(401) naming why it is refused.
    `env`: the (name, digest) pairs of GANFORGE_API_TOKENS, each compared in constant time."""
    presented = digest(token)
    for name, expected_env in env or ():
        if hmac.compare_digest(presented, expected_env):
            return Caller(name)
    match = _TOKEN.match(token)
    row = (
        session.scalar(select(ApiToken).where(ApiToken.prefix == match.group(1))) if match else None
    )
    # Compare even when nothing was found, so the time taken does not tell which it was.
    expected = row.sha256 if row is not None else "0" * 64
    if not hmac.compare_digest(presented, expected) or row is None:
        raise _unauthorized("the token is not valid")
    if row.revoked_at is not None:
        raise _unauthorized(f"the token {row.name!r} was revoked")
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > _LAST_USED_EVERY:
        session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
        session.commit()
    return Caller(row.name)


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(
        401,
        f"authorization: {reason}; send `Authorization: Bearer <token>` "
        "(make one with `ganforge token create NAME`)",
        headers={"WWW-Authenticate": "Bearer"},
    )


bearer = HTTPBearer(
    auto_error=False,
    description="Needed for writes and artifact downloads once any token exists "
    "(`ganforge token create NAME`).",
)


def presented_token(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str:
    """The token in the Authorization header, else (for GET/HEAD only) the cookie."""
    if credentials is not None and credentials.credentials:
        return credentials.credentials
    if request.method.upper() in SAFE_METHODS:
        return request.cookies.get(COOKIE, "")
    return ""


async def authorize(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """The app-wide dependency: refuse a protected request without a valid token.

    Async, so an open request (most reads) costs no thread hop; the database is asked off
    the event loop. Endpoints that record who acted take `CallerDep` (run once per request)."""
    if not needs_token(request.method, request.scope.get("endpoint")):
        return Caller(None)
    token = presented_token(request, credentials)
    env = request.app.state.env_tokens  # GANFORGE_API_TOKENS, parsed once by create_app
    return await run_in_threadpool(_caller, request.app.state.sessions, token, env)


def _caller(factory: sessionmaker[Session], token: str, env: list[tuple[str, str]]) -> Caller:
    with factory() as session:
        if not tokens_exist(session, env):
            return Caller(None)
        if not token:
            raise _unauthorized("this server needs a token for that")
        return check_token(session, token, env)


def whoami(
    factory: sessionmaker[Session], token: str, env: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    """What the dashboard asks first: does this server need a token, and is this one good."""
    with factory() as session:
        required = tokens_exist(session, env)
        if not required or not token:
            return {"required": required, "token": None, "error": None}
        try:
            caller = check_token(session, token, env)
            return {"required": True, "token": caller.token, "error": None}
        except HTTPException as exc:
            reason = str(exc.detail).split(";")[0].removeprefix("authorization: ")
            return {"required": True, "token": None, "error": reason}


CallerDep = Annotated[Caller, Depends(authorize)]


# -- listening addresses --------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Only 127.0.0.0/8, ::1 and `localhost` count; a name or 0.0.0.0 may be reached from
    elsewhere."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
