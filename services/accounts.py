"""Accounts: registration, sign-in and operator creation (the minimal identity path)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flask import current_app
from flask_jwt_extended import create_access_token, create_refresh_token, decode_token
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from extensions import db
from models import Team, TeamMember, User, UserProfile, UserSession
from services.audit import record_audit
from services.errors import Conflict, Unauthorized
from services.passwords import hash_password, needs_rehash, verify_password


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"  # noqa: S105 - a scheme name, not a secret


def _find_user_by_email(email: str) -> User | None:
    return db.session.scalar(select(User).where(func.lower(User.email) == email.lower()))


def _add_user(email: str, password: str, name: str, *, is_admin: bool = False) -> User:
    """Stage a user with their personal team and profile (no commit)."""
    if _find_user_by_email(email) is not None:
        raise Conflict("An account with this email already exists.")
    user = User(
        id=uuid.uuid4(),
        email=email,
        name=name,
        password_hash=hash_password(password),
        is_admin=is_admin,
    )
    team = Team(id=uuid.uuid4(), name=f"{name}'s team", is_personal=True, created_by_id=user.id)
    # No ORM relationships, so flush in foreign-key order ourselves.
    db.session.add(user)
    db.session.flush()
    db.session.add(team)
    db.session.flush()
    db.session.add_all(
        [TeamMember(team_id=team.id, user_id=user.id, role="owner"), UserProfile(user_id=user.id)]
    )
    record_audit(
        "user.registered",
        actor_id=user.id,
        team_id=team.id,
        subject_type="user",
        subject_id=user.id,
    )
    return user


def register_user(email: str, password: str, name: str) -> User:
    """Create an account with its personal team. One transaction."""
    user = _add_user(email, password, name)
    try:
        db.session.commit()
    except IntegrityError:
        # A concurrent registration with the same email won the unique index.
        db.session.rollback()
        raise Conflict("An account with this email already exists.") from None
    return user


def create_user(email: str, password: str, name: str, *, is_admin: bool) -> User:
    """Create an account from the CLI (operators). One transaction."""
    user = _add_user(email, password, name, is_admin=is_admin)
    db.session.commit()
    return user


def log_in(email: str, password: str, *, ip: str | None, user_agent: str | None) -> TokenPair:
    """Verify credentials and open a session (refresh-token family). One transaction."""
    user = _find_user_by_email(email)
    # verify_password spends a hash's time even for unknown emails (no account probing).
    valid = verify_password(user.password_hash if user else None, password)
    if user is None or not valid or not user.is_active or user.deleted_at is not None:
        raise Unauthorized("Email or password is incorrect.")
    if user.password_hash and needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    now = datetime.now(UTC)
    settings = current_app.config["SETTINGS"]
    session = UserSession(
        id=uuid.uuid4(),
        user_id=user.id,
        ip=ip,
        user_agent=(user_agent or "")[:1000] or None,
        last_used_at=now,
        expires_at=now + timedelta(days=settings.refresh_token_days),
    )
    refresh = create_refresh_token(
        identity=str(user.id), additional_claims={"sid": str(session.id)}
    )
    session.current_refresh_jti = decode_token(refresh)["jti"]
    user.last_login_at = now
    db.session.add(session)
    record_audit("user.logged_in", actor_id=user.id, subject_type="user", subject_id=user.id, ip=ip)
    db.session.commit()
    access = create_access_token(identity=str(user.id), additional_claims={"sid": str(session.id)})
    return TokenPair(access, refresh, settings.access_token_minutes * 60)


def load_active_user(user_id: str) -> User | None:
    """The user behind a token, or None if gone or disabled (the token then fails)."""
    try:
        uid = uuid.UUID(user_id)
    except ValueError:
        return None
    user = db.session.get(User, uid)
    if user is None or not user.is_active or user.deleted_at is not None:
        return None
    return user
