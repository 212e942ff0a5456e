"""flask-jwt-extended's callbacks: who a token belongs to, whether it was revoked, and its
failures as problem+json 401s (the library's defaults are bare JSON, some of them 422)."""

from __future__ import annotations

from typing import Any

from flask import Response, request
from flask_jwt_extended import JWTManager

from blueprints.common.auth import READ_METHODS
from blueprints.common.problems import problem
from services.identity.accounts import load_active_user
from services.identity.sessions import is_token_revoked

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="api"'}


def _unauthorized(detail: str) -> Response:
    return problem(401, detail, type_slug="unauthorized", headers=_CHALLENGE)


def register_jwt_callbacks(jwt: JWTManager) -> None:
    # A request that only reads gets its user without adding it to the session (no
    # transaction to open and close for it); see load_active_user.
    jwt.user_lookup_loader(
        lambda _header, payload: load_active_user(
            payload["sub"], attach=request.method not in READ_METHODS
        )
    )
    # Logout, "sign out that device" and password changes revoke tokens before they expire.
    jwt.token_in_blocklist_loader(lambda _header, payload: is_token_revoked(payload))
    jwt.unauthorized_loader(lambda reason: _unauthorized("Authentication is required."))
    # Also reached with a refresh token where an access token belongs (WrongTokenError).
    jwt.invalid_token_loader(lambda reason: _unauthorized("The access token is invalid."))
    jwt.expired_token_loader(lambda header, payload: _unauthorized("The access token has expired."))
    jwt.revoked_token_loader(lambda header, payload: _unauthorized("The access token was revoked."))
    jwt.user_lookup_error_loader(
        lambda header, payload: _unauthorized("The account behind this token is not active.")
    )
    jwt.needs_fresh_token_loader(
        lambda header, payload: _unauthorized("This operation needs a fresh sign-in.")
    )

    def _claims_rejected(*_args: Any) -> Response:
        return _unauthorized("The token's claims were rejected.")

    jwt.token_verification_failed_loader(_claims_rejected)
