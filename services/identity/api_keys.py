"""API keys: long-lived credentials for scripts and servers, limited by scopes.

The secret is shown once. We store its SHA-256 (a key has 256 bits of entropy, so a
slow hash buys nothing) and a short public prefix that finds the row in one lookup.

A key outlives the sign-in that made it, so making one takes more than a session: a
verified address and a fresh proof of the password (the password itself, or a sign-in
of the last few minutes), and the owner is told at once by a security notice that
cannot be switched off. A password reset revokes every key (`revoke_all_api_keys`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import select, update

from extensions import db
from models import ApiKey, User
from services.core.audit import record_audit
from services.core.errors import Forbidden, NotFound, Unauthorized, ValidationFailed
from services.identity.passwords import verify_password
from services.messaging.notifications import notify

KEY_PREFIX = "mk_"
# read: GET/HEAD; write: everything else; ingest: analytics event ingestion only.
SCOPES = ("read", "write", "ingest")
MAX_KEYS_PER_USER = 50
# Touching last_used_at on every call would turn reads into writes; once a minute will do.
_LAST_USED_GRANULARITY = timedelta(minutes=1)


class EmailNotVerified(Forbidden):
    type_slug = "email-not-verified"


class FreshSignInRequired(Forbidden):
    """Neither the current password nor a recent enough sign-in came with the request."""

    type_slug = "fresh-sign-in-required"


@dataclass(frozen=True)
class NewApiKey:
    key: ApiKey
    secret: str  # shown to the user once, never stored


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(
    user: User,
    *,
    name: str,
    scopes: list[str],
    expires_at: datetime | None,
    current_password: str | None,
    signed_in_at: float | None,
) -> NewApiKey:
    """Create a key for the user and tell them by a security notice; returns the only copy
    of its secret. Needs a verified address and either `current_password` or a sign-in
    (`signed_in_at`, epoch seconds) younger than API_KEY_FRESH_SIGN_IN_SECONDS. One
    transaction."""
    if user.email_verified_at is None:
        raise EmailNotVerified(
            "Verify your email address before creating API keys (see the link we emailed you)."
        )
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValidationFailed(
            "Unknown or missing scopes.", errors={"scopes": [f"Choose from {', '.join(SCOPES)}."]}
        )
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise ValidationFailed(
            "The expiry is in the past.", errors={"expires_at": ["Must be in the future."]}
        )
    active = db.session.scalars(
        select(ApiKey.id).where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
    ).all()
    if len(active) >= MAX_KEYS_PER_USER:
        raise ValidationFailed(f"At most {MAX_KEYS_PER_USER} active keys per user.")
    _check_fresh_proof(user, current_password, signed_in_at)
    prefix = secrets.token_hex(6)
    secret = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        id=uuid.uuid4(), user_id=user.id, name=name, prefix=prefix, key_hash=_digest(secret),
        scopes=sorted(set(scopes)), expires_at=expires_at,
    )  # fmt: skip
    db.session.add(key)
    record_audit(
        "api_key.created",
        actor_id=user.id,
        subject_type="api_key",
        subject_id=key.id,
        data={"name": name, "scopes": key.scopes},
    )
    # Security category: emailed at once, whatever the user's notification preferences.
    notify(
        [user.id],
        "api_key_created",
        {"name": name, "prefix": prefix, "scopes": ", ".join(key.scopes)},
        event_key=f"api_key_created:{key.id}",
    )
    db.session.commit()
    return NewApiKey(key, secret)


def _check_fresh_proof(
    user: User, current_password: str | None, signed_in_at: float | None
) -> None:
    """The caller proved the password just now: sent it, or signed in moments ago."""
    if current_password is not None:
        if not verify_password(user.password_hash, current_password):
            raise ValidationFailed(
                "The current password is incorrect.", errors={"current_password": ["Incorrect."]}
            )
        return
    window = current_app.config["SETTINGS"].api_key_fresh_sign_in_seconds
    if signed_in_at is None or time.time() - signed_in_at > window:
        raise FreshSignInRequired(
            "Confirm your password to create an API key: send current_password, or sign in "
            f"again (a sign-in counts for {_duration(window)})."
        )


def _duration(seconds: int) -> str:
    if seconds % 60:
        return f"{seconds} seconds"
    minutes = seconds // 60
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


def revoke_all_api_keys(user: User) -> int:
    """Revoke every live key of the user (account recovery); the caller commits."""
    revoked = db.session.scalars(
        update(ApiKey)
        .where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
        .returning(ApiKey.id)
    ).all()
    return len(revoked)


def list_api_keys(user: User) -> list[ApiKey]:
    """The user's keys that are not revoked, newest first."""
    return list(
        db.session.scalars(
            select(ApiKey)
            .where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
            .order_by(ApiKey.created_at.desc())
        )
    )


def revoke_api_key(user: User, key_id: uuid.UUID) -> None:
    """Revoke one of the user's keys; it stops working at once. One transaction."""
    key = db.session.get(ApiKey, key_id)
    if key is None or key.user_id != user.id or key.revoked_at is not None:
        raise NotFound("No such API key.")
    key.revoked_at = datetime.now(UTC)
    record_audit(
        "api_key.revoked",
        actor_id=user.id,
        subject_type="api_key",
        subject_id=key.id,
        data={"name": key.name},
    )
    db.session.commit()


def authenticate_api_key(secret: str) -> tuple[User, ApiKey]:
    """The user and key behind an `X-API-Key` value, or 401."""
    parts = secret.split("_", 2)  # "mk", prefix, random part (which may contain "_")
    if len(parts) != 3 or not secret.startswith(KEY_PREFIX):
        raise Unauthorized("The API key is invalid.")
    key = db.session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
    if key is None or not hmac.compare_digest(key.key_hash, _digest(secret)):
        raise Unauthorized("The API key is invalid.")
    now = datetime.now(UTC)
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        raise Unauthorized("The API key has been revoked or has expired.")
    user = db.session.get(User, key.user_id)
    if user is None or not user.is_active or user.deleted_at is not None:
        raise Unauthorized("The API key's owner is not active.")
    if key.last_used_at is None or now - key.last_used_at > _LAST_USED_GRANULARITY:
        # A separate tiny transaction: the request itself may be read-only.
        with db.engine.begin() as conn:
            conn.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))
        key.last_used_at = now
    return user, key
