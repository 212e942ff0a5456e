"""Small builders for test data, going through the real services."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from flask_jwt_extended import create_access_token
from sqlalchemy import select

from extensions import db
from models import Job, Subscription, TeamMember, User
from services.identity import accounts, api_keys
from services.teams import teams

PASSWORD = "correct horse battery staple"
_seq = itertools.count(1)


def make_user(*, email: str | None = None, admin: bool = False, name: str = "Test User") -> User:
    email = email or f"user{next(_seq)}@example.com"
    return accounts.create_user(email, PASSWORD, name, is_admin=admin)


def make_api_key(user: User, scopes: Iterable[str], *, name: str = "test key") -> str:
    """A new API key's secret for `user` (proving the password, as the API asks)."""
    return api_keys.create_api_key(
        user, name=name, scopes=list(scopes), expires_at=None,
        current_password=PASSWORD, signed_in_at=None,
    ).secret  # fmt: skip


def auth_headers(user: User) -> Mapping[str, str]:
    """An Authorization header with a fresh access token for `user`."""
    return {"Authorization": f"Bearer {create_access_token(identity=str(user.id))}"}


def verify_email(user: User) -> User:
    """Mark the address verified, as following the emailed link would."""
    user.email_verified_at = datetime.now(UTC)
    db.session.commit()
    return user


def make_team(
    owner: User, name: str = "Acme", members: Iterable[tuple[User, str]] = ()
) -> uuid.UUID:
    """A team created by `owner` (through the service), with `members` as (user, role)."""
    team_id = teams.create_team(owner, name).team.id
    for user, role in members:
        add_member(team_id, user, role)
    return team_id


def personal_team(user: User) -> uuid.UUID:
    """The team sign-up made for `user` (their first membership)."""
    team_id = db.session.scalar(select(TeamMember.team_id).where(TeamMember.user_id == user.id))
    assert team_id is not None
    return team_id


def add_member(team_id: uuid.UUID, user: User, role: str) -> None:
    """Put a user in a team directly (joining normally takes an emailed invitation)."""
    db.session.add(TeamMember(team_id=team_id, user_id=user.id, role=role))
    db.session.commit()


def make_job(user: User, *, status: str = "queued", created_at: datetime | None = None) -> Job:
    """A ping job row of `user`'s in `status` (no worker: only the row), committed."""
    job = Job(id=uuid.uuid4(), type="maintenance.ping", queue="default", user_id=user.id)
    job.status = status
    if created_at is not None:
        job.created_at = created_at
    db.session.add(job)
    db.session.commit()
    return job


def give_plan(team_id: uuid.UUID, plan: str = "business") -> Subscription:
    """An active subscription row for the team, as if the gateway had confirmed it (no
    gateway call): for tests that need a paid plan's limits, not the billing itself."""
    subscription = Subscription(team_id=team_id, plan=plan, status="active")
    db.session.add(subscription)
    db.session.commit()
    return subscription


def team_of_every_role() -> dict[str, Any]:
    """{"id": team id, "users": {role: user}} for a team with an owner, an admin, a member
    and a viewer, plus an "outsider" who belongs to no team of theirs."""
    users = {role: make_user(name=role) for role in ("owner", "admin", "member", "viewer")}
    team_id = make_team(
        users["owner"],
        members=[(users["admin"], "admin"), (users["member"], "member"),
                 (users["viewer"], "viewer")],
    )  # fmt: skip
    users["outsider"] = make_user(name="outsider")
    return {"id": team_id, "users": users}
