"""Who may change things and download artifacts: the request checks (tokens: app.tokens).

While no token exists the service is open, as on a laptop. Once `ganforge token create NAME`
has made one, every write (any method but GET/HEAD/OPTIONS, unless the endpoint is marked
`@public`) and every artifact download (endpoints marked `@download`) needs
`Authorization: Bearer <token>`. Reads of job state, metrics and the event stream stay open.

The dashboard keeps the token in the browser and also sets it as the `ganforge_token` cookie
(SameSite=Strict), which is accepted for downloads (GET) only, so that links and <img> work;
a cookie never authorizes a write, so a cross-site form cannot use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from app.tokens import TokenRefused, tokens_exist, verify_token

COOKIE = "ganforge_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

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


@dataclass(frozen=True)
class Caller:
    """Who made a request: the token's name, or None when the service needs no token."""

    token: str | None


def check_token(session: Session, token: str, env: list[tuple[str, str]] | None = None) -> Caller:
    """The caller a presented token belongs to; HTTPException(401) naming why it is refused."""
    try:
        return Caller(verify_token(session, token, env))
    except TokenRefused as exc:
        raise _unauthorized(str(exc)) from None


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
            return {"required": True, "token": verify_token(session, token, env), "error": None}
        except TokenRefused as exc:
            return {"required": True, "token": None, "error": str(exc)}


CallerDep = Annotated[Caller, Depends(authorize)]
