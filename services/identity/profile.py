"""The signed-in user's own profile, settings, and account deletion."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, update

from extensions import db
from models import (
    ApiKey,
    Job,
    Notification,
    NotificationPreference,
    Setting,
    Team,
    TeamInvite,
    TeamMember,
    User,
    UserFile,
    UserProfile,
)
from services.core.audit import record_audit
from services.core.errors import Conflict, ValidationFailed
from services.identity import sessions
from services.insights import aggregation, dashboard, search
from services.jobs import names
from services.jobs.outbox import enqueue

MAX_SETTINGS = 100


def get_profile(user: User) -> UserProfile:
    profile = db.session.get(UserProfile, user.id)
    if profile is None:  # accounts made before profiles existed
        profile = UserProfile(user_id=user.id)
        db.session.add(profile)
        db.session.flush()
    return profile


def update_profile(user: User, changes: dict[str, Any]) -> tuple[User, UserProfile]:
    """Apply allowed profile changes (name, avatar, timezone, locale). One transaction."""
    profile = get_profile(user)
    before: dict[str, Any] = {}
    if "name" in changes:
        before["name"], user.name = user.name, changes["name"]
    if "avatar_file_id" in changes:
        file_id = changes["avatar_file_id"]
        if file_id is not None and not _is_ready_file_of_my_teams(user, file_id):
            raise ValidationFailed("No such image.", errors={"avatar_file_id": ["Unknown file."]})
        before["avatar_file_id"], profile.avatar_file_id = profile.avatar_file_id, file_id
    for field in ("timezone", "locale"):
        if field in changes:
            before[field] = getattr(profile, field)
            setattr(profile, field, changes[field])
    diff = {
        k: {"from": str(v) if v is not None else None, "to": str(changes[k])}
        for k, v in before.items()
    }
    record_audit("user.profile_updated", actor_id=user.id, subject_type="user", subject_id=user.id,
                 data=diff)  # fmt: skip
    db.session.commit()
    return user, profile


def _is_ready_file_of_my_teams(user: User, file_id: uuid.UUID) -> bool:
    my_teams = select(TeamMember.team_id).where(TeamMember.user_id == user.id)
    found = db.session.scalar(
        select(func.count()).where(
            UserFile.id == file_id, UserFile.state == "ready", UserFile.team_id.in_(my_teams)
        )
    )
    return bool(found)


def get_settings(user: User) -> dict[str, Any]:
    rows = db.session.scalars(select(Setting).where(Setting.user_id == user.id))
    return {row.key: row.value.get("v") for row in rows}


def update_settings(user: User, changes: dict[str, Any]) -> dict[str, Any]:
    """Merge settings: a key set to null is removed. One transaction."""
    current = {
        row.key: row
        for row in db.session.scalars(select(Setting).where(Setting.user_id == user.id))
    }
    for key, value in changes.items():
        row = current.get(key)
        if value is None:
            if row is not None:
                db.session.delete(row)
                del current[key]
        elif row is None:
            current[key] = Setting(user_id=user.id, key=key, value={"v": value})
            db.session.add(current[key])
        else:
            row.value = {"v": value}
    if len(current) > MAX_SETTINGS:
        raise ValidationFailed(
            f"At most {MAX_SETTINGS} settings.", errors={"settings": ["Too many keys."]}
        )
    db.session.commit()
    return get_settings(user)


def request_account_deletion(user: User) -> Job:
    """Queue the anonymisation of the account (refused while it solely owns a shared team)."""
    owned = db.session.scalars(
        select(Team).join(TeamMember, TeamMember.team_id == Team.id).where(
            TeamMember.user_id == user.id, TeamMember.role == "owner", Team.deleted_at.is_(None),
            Team.is_personal.is_(False),
        )
    ).all()  # fmt: skip
    for team in owned:
        others = db.session.scalar(
            select(func.count()).where(TeamMember.team_id == team.id, TeamMember.user_id != user.id)
        )
        if others:
            raise Conflict(f"Transfer the ownership of '{team.name}' before deleting your account.")
    job = enqueue(names.ACCOUNTS_DELETE, args={"user_id": str(user.id)}, user_id=user.id)
    user.is_active = False  # signs the account out everywhere at once; the job does the rest
    sessions.mark_refresh_sessions_revoked(user.id)
    record_audit(
        "user.deletion_requested", actor_id=user.id, subject_type="user", subject_id=user.id
    )
    db.session.commit()
    return job


def anonymise_user(user_id: uuid.UUID) -> bool:
    """Remove personal data, keep financial and audit records (the job's body; no commit)."""
    user = db.session.get(User, user_id, with_for_update=True)
    if user is None or user.deleted_at is not None:
        return False
    for model in (UserProfile, Setting, NotificationPreference, Notification, ApiKey):
        db.session.execute(delete(model).where(model.user_id == user_id))
    sessions.mark_refresh_sessions_revoked(user_id)
    personal = select(TeamMember.team_id).where(TeamMember.user_id == user_id)
    gone = db.session.scalars(
        update(Team)
        .where(Team.id.in_(personal), Team.is_personal.is_(True), Team.deleted_at.is_(None))
        .values(deleted_at=datetime.now(UTC))
        .returning(Team.id)
    ).all()
    for team_id in gone:
        aggregation.forget_team(team_id)  # its analytics rollups (no foreign key)
    left = db.session.execute(
        delete(TeamMember)
        .where(TeamMember.user_id == user_id)
        .returning(TeamMember.id, TeamMember.team_id)
    ).all()
    for member_id, team_id in left:
        # Their name and email go from every team's search with the memberships.
        search.remove_document(search.MEMBER, member_id)
        # A Core DELETE: the dashboard's flush listener does not see it.
        dashboard.invalidate(team_id)
    db.session.execute(
        update(TeamInvite).where(func.lower(TeamInvite.email) == user.email.lower(),
                                 TeamInvite.accepted_at.is_(None), TeamInvite.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )  # fmt: skip
    user.email = f"deleted-{user.id}@invalid"
    user.name = "Deleted user"
    user.password_hash = None
    user.is_active = False
    user.email_verified_at = None
    user.deleted_at = datetime.now(UTC)
    record_audit("user.anonymised", subject_type="user", subject_id=user.id)
    return True
