"""API keys: long-lived credentials for scripts and servers, limited by scopes.

The secret is shown once. We store its SHA-256 (a key has 256 bits of entropy, so a
slow hash buys nothing) and a short public prefix that finds the row in one lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from extensions import db
from models import ApiKey, User
from services.audit import record_audit
from services.errors import NotFound, Unauthorized, ValidationFailed

KEY_PREFIX = "mk_"
# read: GET/HEAD; write: everything else; ingest: analytics event ingestion only.
SCOPES = ("read", "write", "ingest")
MAX_KEYS_PER_USER = 50
# Touching last_used_at on every call would turn reads into writes; once a minute will do.
_LAST_USED_GRANULARITY = timedelta(minutes=1)


@dataclass(frozen=True)
class NewApiKey:
    key: ApiKey
    secret: str  # shown to the user once, never stored


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(
    user: User, *, name: str, scopes: list[str], expires_at: datetime | None
) -> NewApiKey:
    """Create a key for the user; returns the only copy of its secret. One transaction."""
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
    db.session.commit()
    return NewApiKey(key, secret)


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
