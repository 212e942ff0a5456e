"""Sign-in sessions: refresh-token families with rotation and reuse detection, and the
Redis blocklist that makes revoked access tokens stop working before they expire.

A session row is one family. Each refresh issues a new refresh token and records its jti
as the only one still valid; presenting an older one means it was copied, so the whole
family is revoked (and audited). Access tokens carry the session id (`sid`), so revoking a
session blocks its access tokens too, and the sign-in's time (`auth_time`, the session's
start: a refresh does not renew it) for operations that need a recent sign-in.

Account recovery revokes more than sessions: `revoke_user_tokens` sets a per-user cutoff,
and every access token (and stream token) issued before it stops working, whether or not
it belongs to a session. Tokens carry `iat` with sub-second precision, so a sign-in in the
same second right after a reset keeps working while everything before it is refused.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from flask_jwt_extended import create_access_token, create_refresh_token, decode_token
from jwt import PyJWTError
from sqlalchemy import select, update

from extensions import db, redis
from logs import get_logger
from models import User, UserSession
from services.core.audit import record_audit
from services.core.errors import DependencyUnavailable, NotFound, Unauthorized
from services.messaging.notifications import notify

log = get_logger(__name__)
_BLOCKED_JTI = "auth:revoked:jti:"
_BLOCKED_SID = "auth:revoked:sid:"
# Epoch seconds: the user's tokens issued at or before it are revoked.
_REVOKED_BEFORE = "auth:revoked:user:"


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    session_id: uuid.UUID
    token_type: str = "Bearer"


def open_session(user: User, *, ip: str | None, user_agent: str | None) -> TokenPair:
    """Start a refresh-token family for `user` (the caller commits)."""
    now = datetime.now(UTC)
    settings = current_app.config["SETTINGS"]
    session = UserSession(
        id=uuid.uuid4(),
        user_id=user.id,
        ip=ip,
        user_agent=(user_agent or "")[:1000] or None,
        device=device_name(user_agent),
        last_used_at=now,
        expires_at=now + timedelta(days=settings.refresh_token_days),
        created_at=now,  # the sign-in's time, which every token of the session carries
    )
    db.session.add(session)
    return _issue(user, session)


def _issue(user: User, session: UserSession) -> TokenPair:
    claims: dict[str, Any] = {
        "sid": str(session.id),
        "auth_time": session.created_at.timestamp(),
        # RFC 7519 allows a fractional NumericDate; whole seconds could not tell a token
        # issued just after a revocation cutoff from one issued just before it.
        "iat": round(time.time(), 6),
    }
    refresh = create_refresh_token(identity=str(user.id), additional_claims=claims)
    session.current_refresh_jti = decode_token(refresh)["jti"]
    access = create_access_token(identity=str(user.id), additional_claims=claims)
    minutes = current_app.config["SETTINGS"].access_token_minutes
    return TokenPair(access, refresh, minutes * 60, session.id)


def rotate_refresh_token(
    refresh_token: str, *, ip: str | None, user_agent: str | None
) -> TokenPair:
    """Exchange a refresh token for a new pair; a reused one revokes its family. One transaction."""
    try:
        claims = decode_token(refresh_token)
    except PyJWTError:
        raise Unauthorized("The refresh token is invalid or expired.") from None
    if claims.get("type") != "refresh" or "sid" not in claims:
        raise Unauthorized("Send a refresh token.")
    session = db.session.scalar(
        select(UserSession).where(UserSession.id == uuid.UUID(claims["sid"])).with_for_update()
    )
    user = db.session.get(User, uuid.UUID(claims["sub"]))
    now = datetime.now(UTC)
    if session is None or user is None or not user.is_active or user.deleted_at is not None:
        raise Unauthorized("The session no longer exists.")
    if session.revoked_at is not None or session.expires_at <= now:
        raise Unauthorized("The session has ended; sign in again.")
    if claims["jti"] != session.current_refresh_jti:
        # An older token of this family came back: someone holds a copy. Kill the family.
        _revoke(session, "refresh_token_reused")
        record_audit(
            "auth.refresh_token_reused",
            actor_id=user.id,
            subject_type="session",
            subject_id=session.id,
            ip=ip,
        )
        notify([user.id], "token_reuse", {}, event_key=f"token_reuse:{session.id}")
        db.session.commit()
        log.warning("refresh_token_reused", session_id=str(session.id), user_id=str(user.id))
        raise Unauthorized("This refresh token was already used; the session has been revoked.")
    session.last_used_at, session.ip = now, ip
    session.user_agent = (user_agent or "")[:1000] or session.user_agent
    pair = _issue(user, session)
    db.session.commit()
    return pair


def list_sessions(user: User) -> list[UserSession]:
    """The user's live sessions, most recently used first."""
    return list(
        db.session.scalars(
            select(UserSession)
            .where(
                UserSession.user_id == user.id,
                UserSession.revoked_at.is_(None),
                UserSession.expires_at > datetime.now(UTC),
            )
            .order_by(UserSession.last_used_at.desc().nulls_last())
        )
    )


def end_session(user: User, session_id: uuid.UUID, *, reason: str = "logout") -> None:
    """Revoke one of the user's sessions (logout, or "sign out that device"). One transaction."""
    session = db.session.get(UserSession, session_id)
    if session is None or session.user_id != user.id or session.revoked_at is not None:
        raise NotFound("No such session.")
    _revoke(session, reason)
    record_audit(
        f"auth.session_{reason}", actor_id=user.id, subject_type="session", subject_id=session.id
    )
    db.session.commit()


def revoke_all_sessions(user: User, *, except_session: uuid.UUID | None, reason: str) -> int:
    """Revoke every live session of the user but one (the caller commits)."""
    sessions = db.session.scalars(
        select(UserSession).where(UserSession.user_id == user.id, UserSession.revoked_at.is_(None))
    ).all()
    revoked = 0
    for session in sessions:
        if session.id != except_session:
            _revoke(session, reason)
            revoked += 1
    return revoked


def _revoke(session: UserSession, reason: str) -> None:
    session.revoked_at, session.revoked_reason = datetime.now(UTC), reason
    session.current_refresh_jti = None
    block_session(session.id)


def block_access_token(jti: str, expires_at: int) -> None:
    """Blocklist one access token until it would have expired anyway."""
    ttl = max(1, expires_at - int(datetime.now(UTC).timestamp()))
    redis.client.set(_BLOCKED_JTI + jti, "1", ex=ttl)


def block_session(session_id: uuid.UUID) -> None:
    """Block every access token of a session for as long as any of them can live."""
    ttl = current_app.config["SETTINGS"].access_token_minutes * 60 + 60
    redis.client.set(_BLOCKED_SID + str(session_id), "1", ex=ttl)


def revoke_user_tokens(user_id: uuid.UUID) -> None:
    """Revoke every access and stream token the user holds now, with or without a session.

    Kept for as long as any of them can live (stream tokens never outlive their access
    token). Call it before committing the change that makes it necessary: if the commit
    fails, tokens were revoked for nothing, which is the safe way round.
    """
    ttl = current_app.config["SETTINGS"].access_token_minutes * 60 + 60
    redis.client.set(_REVOKED_BEFORE + str(user_id), f"{time.time():.6f}", ex=ttl)


def revocation_keys(payload: dict[str, Any]) -> list[str]:
    """The Redis keys that revoke a token: its jti's, its user's cutoff, its session's (if
    any), in this order (the default rate limit's hit reads them too:
    blueprints.common.default_limit applies the same rule as is_token_revoked in its
    script)."""
    keys = [_BLOCKED_JTI + str(payload.get("jti")), _REVOKED_BEFORE + str(payload.get("sub"))]
    if payload.get("sid"):
        keys.append(_BLOCKED_SID + str(payload["sid"]))
    return keys


def is_token_revoked(payload: dict[str, Any]) -> bool:
    """The revocation check for every access and stream token (its jti, its session and its
    user's cutoff, in one round trip). Fails closed: Redis down means 503."""
    return check_token(payload)[0]


def check_token(payload: dict[str, Any], also: str | None = None) -> tuple[bool, bytes | None]:
    """is_token_revoked, reading the key `also` in the same round trip: (revoked, its value)."""
    keys = revocation_keys(payload)
    try:
        values: list[bytes | None] = redis.client.mget(  # type: ignore[assignment]
            [also, *keys] if also else keys
        )
    except Exception as exc:
        log.warning("revocation_check_unavailable", error=type(exc).__name__)
        raise DependencyUnavailable("Cannot check token revocation right now.") from exc
    extra = values.pop(0) if also else None
    blocked, cutoff, *session_blocked = values
    if blocked is not None or any(v is not None for v in session_blocked):
        return True, extra
    return cutoff is not None and issued_at(payload) <= float(cutoff), extra


def issued_at(payload: dict[str, Any]) -> float:
    """The token's `iat`; a token without one counts as issued at the epoch (revoked by any
    cutoff)."""
    try:
        return float(payload.get("iat") or 0)
    except (TypeError, ValueError):
        return 0.0


def mark_refresh_sessions_revoked(user_id: uuid.UUID) -> None:
    """Bulk-revoke every session of a user (account deletion); the caller commits."""
    now = datetime.now(UTC)
    ids = db.session.scalars(
        update(UserSession)
        .where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason="account_deleted", current_refresh_jti=None)
        .returning(UserSession.id)
    ).all()
    for session_id in ids:
        block_session(session_id)


def seen_before(user: User, *, ip: str | None, user_agent: str | None) -> bool:
    """Whether the user signed in from this address and browser within the last 90 days."""
    since = datetime.now(UTC) - timedelta(days=90)
    found = db.session.scalar(
        select(UserSession.id)
        .where(
            UserSession.user_id == user.id,
            UserSession.created_at >= since,
            UserSession.ip == ip,
            UserSession.user_agent == ((user_agent or "")[:1000] or None),
        )
        .limit(1)
    )
    return found is not None


def device_name(user_agent: str | None) -> str | None:
    """A human label for the session list ("Firefox on Linux"), best effort."""
    if not user_agent:
        return None
    browsers = ("Edg", "Firefox", "Chrome", "Safari", "curl", "python-requests")
    systems = ("Windows", "Mac OS", "Android", "iPhone", "Linux")
    browser = next((b for b in browsers if b in user_agent), None)
    system = next((s for s in systems if s in user_agent), None)
    label = " on ".join(x for x in (browser and browser.replace("Edg", "Edge"), system) if x)
    return label or user_agent[:60]
