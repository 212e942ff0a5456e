"""HTTP for accounts: register and sign in (the identity issue adds the rest)."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from flask import request

from blueprints.auth.schemas import LoginIn, RegisterIn, TokensOut, UserEnvelope, UserOut
from blueprints.common.idempotency import idempotent
from extensions import limiter
from models import User
from services import accounts

bp = APIBlueprint("auth", __name__, url_prefix="/api/v1/auth", tag="auth")


def _auth_limit() -> str:
    from flask import current_app

    return str(current_app.config["SETTINGS"].ratelimit_auth)


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        name=user.name,
        email_verified=user.email_verified_at is not None,
        is_admin=user.is_admin,
        created_at=user.created_at,
    )


@bp.post("/register")
@limiter.limit(_auth_limit)
@bp.input(RegisterIn, location="json", arg_name="body")
@idempotent()
@bp.output(UserEnvelope, status_code=201)
def register(body: RegisterIn) -> Any:
    """Create an account (and its personal team)."""
    user = accounts.register_user(str(body.email), body.password, body.name)
    return UserEnvelope(user=user_out(user))


@bp.post("/login")
@limiter.limit(_auth_limit)
@bp.input(LoginIn, location="json", arg_name="body")
@bp.output(TokensOut)
def login(body: LoginIn) -> TokensOut:
    """Exchange email and password for an access and a refresh token."""
    tokens = accounts.log_in(
        str(body.email),
        body.password,
        ip=request.remote_addr,
        user_agent=request.headers.get("User-Agent"),
    )
    return TokensOut(
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        expires_in=tokens.expires_in,
    )
