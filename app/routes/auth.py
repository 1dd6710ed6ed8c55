"""GET /api/auth: whether this server needs a token, and whether the one presented is good."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, Field

from app.auth import bearer, presented_token, whoami

router = APIRouter(prefix="/api")


class AuthOut(BaseModel):
    required: bool = Field(description="writes and downloads need a token (one exists)")
    token: str | None = Field(description="the name of the presented token, when it is valid")
    error: str | None = Field(description="why the presented token is refused")


@router.get("/auth")
async def auth_status(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> AuthOut:
    """Checks the token in `Authorization: Bearer` (or the dashboard's cookie); never 401."""
    token = presented_token(request, credentials)
    env = request.app.state.env_tokens
    return AuthOut(**await run_in_threadpool(whoami, request.app.state.sessions, token, env))
