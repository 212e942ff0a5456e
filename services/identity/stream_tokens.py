"""Stream tokens: the short `?token=` that lets a browser's EventSource open the stream.

An EventSource cannot send an Authorization header, so the client swaps its access token
for one of these (POST /events/token) and puts it in the URL. It names the user and the
access token it was minted with, so it never outlives that token and every revocation of
it (logout, a password reset) refuses the stream too; the stream re-checks it on a timer.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from flask import current_app
from itsdangerous import BadSignature, URLSafeTimedSerializer

from models import User
from services.core.errors import Unauthorized
from services.identity.accounts import load_active_user
from services.identity.sessions import is_token_revoked

_STREAM_TOKEN_SALT = "maycole.events-stream"


@dataclass(frozen=True)
class StreamCredential:
    """Who a stream serves and what must stay valid while it runs (checked on heartbeats)."""

    user_id: uuid.UUID
    jti: str | None
    session_id: str | None
    expires_at: float  # epoch seconds: the access token's expiry
    issued_at: float  # epoch seconds: the access token's `iat` (a reset revokes older ones)

    def is_valid(self) -> bool:
        """Still unexpired and not revoked (raises DependencyUnavailable if Redis is down)."""
        if time.time() >= self.expires_at:
            return False
        return not is_token_revoked(self.claims())

    def claims(self) -> dict[str, Any]:
        """The access token's claims that revocation looks at."""
        return {"jti": self.jti, "sid": self.session_id, "sub": str(self.user_id),
                "iat": self.issued_at}  # fmt: skip


@dataclass(frozen=True)
class StreamToken:
    token: str
    expires_in: int


def _token_serializer() -> URLSafeTimedSerializer:
    # Its own salt: no other token kind (emails' links, JWTs) can pass for this one.
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=_STREAM_TOKEN_SALT)


def mint_stream_token(
    user_id: uuid.UUID,
    *,
    session_id: str | None,
    access_jti: str,
    access_expires_at: int,
    access_issued_at: float,
) -> StreamToken:
    """A `?token=` for the stream endpoint only, valid for `events_token_seconds` at most.

    Bound to the access token it is minted with: it never outlives it, and revoking that
    token, its session (logout) or every token of its user (a password reset) refuses it
    too.
    """
    now = time.time()
    expires_at = min(
        now + current_app.config["SETTINGS"].events_token_seconds, float(access_expires_at)
    )
    payload = {
        "uid": str(user_id),
        "sid": session_id,
        "jti": access_jti,
        "exp": round(expires_at, 3),
        "aexp": access_expires_at,
        "aiat": access_issued_at,
    }
    return StreamToken(_token_serializer().dumps(payload), max(0, int(expires_at - now)))


def stream_token_user(token: str) -> str | None:
    """The user id a correctly signed token names, expired or not (for rate-limit keys)."""
    try:
        payload = _token_serializer().loads(token)
    except BadSignature:
        return None
    return str(payload.get("uid")) if isinstance(payload, dict) else None


def authenticate_stream_token(token: str) -> tuple[User, StreamCredential]:
    """The active user a stream token names, or 401 (bad, expired, revoked, user gone)."""
    serializer = _token_serializer()
    try:
        # max_age: a ceiling set by the verifying side too, whatever `exp` says.
        payload = serializer.loads(
            token, max_age=current_app.config["SETTINGS"].events_token_seconds + 1
        )
    except BadSignature:  # includes SignatureExpired
        raise Unauthorized("The stream token is invalid or has expired.") from None
    if not isinstance(payload, dict) or time.time() >= float(payload.get("exp", 0)):
        raise Unauthorized("The stream token is invalid or has expired.")
    credential = StreamCredential(
        user_id=uuid.UUID(str(payload["uid"])),
        jti=payload.get("jti"),
        session_id=payload.get("sid"),
        expires_at=float(payload.get("aexp", 0)),
        issued_at=float(payload.get("aiat", 0)),
    )
    if is_token_revoked(credential.claims()):
        raise Unauthorized("The stream token was revoked.")
    user = load_active_user(str(credential.user_id))
    if user is None:
        raise Unauthorized("The account behind this token is not active.")
    return user, credential
