"""Teams: the membership guard every team-scoped route goes through, and the team itself.

`load_membership` is the one place that decides whether a caller may touch a team: the
HTTP guard (`blueprints.common.teams.team_permission`) calls it before anything else, and
every service that changes a team calls it again with `lock=True`, so the decision is
re-made under the team's row lock and holds until that service commits (two owners
demoting each other at once can never leave a team without an owner).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import current_app
from psycopg.rows import class_row
from sqlalchemy import bindparam, delete, select

from extensions import Read, db
from models import Job, Subscription, Team, TeamInvite, TeamMember, User
from services.core import permissions
from services.core.audit import record_audit
from services.core.errors import Conflict, Forbidden, NotFound
from services.core.pagination import Page, paginate
from services.core.permissions import Membership
from services.insights import aggregation, dashboard, search
from services.jobs import names
from services.jobs.outbox import enqueue

_PENDING_JOB = ("queued", "retrying", "running")


# Every team route runs it: built once (building it cost as much CPU as running it), on
# the tables' plain columns, and read into a Membership, never a TeamMember entity.
_MEMBERS, _TEAMS = TeamMember.__table__.c, Team.__table__.c
_MEMBERSHIP = (
    select(_MEMBERS.team_id, _MEMBERS.user_id, _MEMBERS.role)
    .join(Team.__table__, _TEAMS.id == _MEMBERS.team_id)
    .where(
        _MEMBERS.team_id == bindparam("team_id"),
        _MEMBERS.user_id == bindparam("user_id"),
        _TEAMS.deleted_at.is_(None),
    )
)
_READ_MEMBERSHIP = Read.of(_MEMBERSHIP, class_row(Membership))


@dataclass(frozen=True)
class TeamWithRole:
    team: Team
    role: str  # the caller's role in the team


def load_membership(
    user: User, team_id: uuid.UUID, action: str, *, lock: bool = False
) -> Membership:
    """The caller's membership of a live team whose role allows `action`.

    404 for non-members and deleted teams (their existence is not leaked), 403 for a role
    too weak. Without `lock` (the HTTP guard) one SELECT of committed rows outside the
    session (`db.read_one`); with `lock`, in the session's transaction after locking the
    team row (held until the caller commits), so the role read is the one that holds.
    """
    params = {"team_id": team_id, "user_id": user.id}
    membership: Membership | None
    if lock:
        locked = db.session.scalar(
            select(Team.id).where(Team.id == team_id, Team.deleted_at.is_(None)).with_for_update()
        )
        if locked is None:
            raise NotFound("No such team.")
        row = db.session.execute(_MEMBERSHIP, params).first()
        membership = Membership(*row) if row is not None else None
    else:
        membership = db.read_one(_READ_MEMBERSHIP, params)
    if membership is None:
        raise NotFound("No such team.")
    if not permissions.allows(membership.role, action):
        raise Forbidden(
            f"Your role in this team ({membership.role}) does not allow you to "
            f"{permissions.describe(action)}."
        )
    return membership


def list_my_teams(user: User, *, limit: int, cursor: str | None) -> Page[TeamWithRole]:
    """The live teams the user belongs to, with their role, most recently joined first."""
    query = (
        select(TeamMember)
        .join(Team, Team.id == TeamMember.team_id)
        .where(TeamMember.user_id == user.id, Team.deleted_at.is_(None))
    )
    page = paginate(query, TeamMember, limit, cursor)
    teams = {
        team.id: team
        for team in db.session.scalars(
            select(Team).where(Team.id.in_([m.team_id for m in page.items]))
        )
    }
    return Page([TeamWithRole(teams[m.team_id], m.role) for m in page.items], page.next_cursor)


def create_team(user: User, name: str) -> TeamWithRole:
    """Create a team owned by `user`. One transaction."""
    team = Team(id=uuid.uuid4(), name=name, is_personal=False, created_by_id=user.id)
    db.session.add(team)
    db.session.flush()  # no ORM relationships: the team must exist before its member
    member = TeamMember(id=uuid.uuid4(), team_id=team.id, user_id=user.id, role=permissions.OWNER)
    db.session.add(member)
    # Indexed in this transaction (not by a task after commit): atomic, cheap for one row.
    search.index_document(team.id, "member", member.id, user.name, user.email)
    record_audit(
        "team.created",
        actor_id=user.id,
        team_id=team.id,
        subject_type="team",
        subject_id=team.id,
        data={"name": {"from": None, "to": name}},
    )
    db.session.commit()
    return TeamWithRole(team, permissions.OWNER)


def get_team(membership: Membership) -> TeamWithRole:
    """The team of a membership the guard has already checked."""
    team = db.session.get(Team, membership.team_id)
    if team is None:
        raise NotFound("No such team.")
    return TeamWithRole(team, membership.role)


def update_team(user: User, team_id: uuid.UUID, changes: dict[str, Any]) -> TeamWithRole:
    """Rename the team (admin+); audits the before/after of what changed. One transaction."""
    actor = load_membership(user, team_id, "team.update", lock=True)
    team = db.session.get(Team, team_id)
    assert team is not None  # locked live above
    diff = {
        field: {"from": getattr(team, field), "to": value}
        for field, value in changes.items()
        if getattr(team, field) != value
    }
    for field, value in changes.items():
        setattr(team, field, value)
    if diff:
        record_audit(
            "team.updated",
            actor_id=user.id,
            team_id=team_id,
            subject_type="team",
            subject_id=team_id,
            data=diff,
        )
    db.session.commit()
    return TeamWithRole(team, actor.role)


def request_team_deletion(user: User, team_id: uuid.UUID) -> Job:
    """Start the `teams.delete` job (owner only); a pending one is returned, not doubled."""
    load_membership(user, team_id, "team.delete", lock=True)
    team = db.session.get(Team, team_id)
    assert team is not None  # locked live above
    if team.is_personal:
        raise Conflict("A personal team cannot be deleted; it goes away with its account.")
    pending = db.session.scalar(
        select(Job).where(
            Job.type == names.TEAMS_DELETE, Job.team_id == team_id, Job.status.in_(_PENDING_JOB)
        )
    )
    if pending is not None:
        db.session.rollback()  # nothing changed; release the lock
        return pending
    job = enqueue(
        names.TEAMS_DELETE, args={"team_id": str(team_id)}, user_id=user.id, team_id=team_id
    )
    record_audit(
        "team.deletion_requested",
        actor_id=user.id,
        team_id=team_id,
        subject_type="team",
        subject_id=team_id,
        data={"job_id": str(job.id)},
    )
    db.session.commit()
    return job


def soft_delete_team(team_id: uuid.UUID, *, actor_id: uuid.UUID | None) -> dict[str, Any]:
    """Mark the team deleted and drop its memberships, open invites and analytics rollups;
    idempotent.

    Financial and audit rows stay. No commit: the `teams.delete` job commits these
    effects together with its success.
    """
    team = db.session.scalar(select(Team).where(Team.id == team_id).with_for_update())
    if team is None:
        raise NotFound("No such team.")
    if team.is_personal:
        raise Conflict("A personal team cannot be deleted; it goes away with its account.")
    members = db.session.execute(delete(TeamMember).where(TeamMember.team_id == team_id))
    dashboard.invalidate(team_id)  # a Core DELETE: the flush listener does not see it
    invites = db.session.execute(
        delete(TeamInvite).where(
            TeamInvite.team_id == team_id,
            TeamInvite.accepted_at.is_(None),
            TeamInvite.revoked_at.is_(None),
        )
    )
    # Derived data without a foreign key: deleted here, and runs skip deleted teams.
    rollups = aggregation.forget_team(team_id)
    counts = {
        "members_removed": int(members.rowcount or 0),  # type: ignore[attr-defined]
        "invites_removed": int(invites.rowcount or 0),  # type: ignore[attr-defined]
        "rollups_removed": rollups,
    }
    if team.deleted_at is None:
        _stop_billing(team_id, actor_id)
        team.deleted_at = datetime.now(UTC)
        record_audit(
            "team.deleted",
            actor_id=actor_id,
            team_id=team_id,
            subject_type="team",
            subject_id=team_id,
            data={"deleted_at": {"from": None, "to": team.deleted_at.isoformat()}, **counts},
        )
    return {"team_id": str(team_id), **counts}


def _stop_billing(team_id: uuid.UUID, actor_id: uuid.UUID | None) -> None:
    """A deleted team must not keep being billed: end its subscription with the period."""
    live = db.session.scalar(
        select(Subscription).where(
            Subscription.team_id == team_id,
            Subscription.status != "canceled",
            Subscription.cancel_at_period_end.is_(False),
            Subscription.provider_subscription_id.is_not(None),
        )
    )
    if live is not None:
        settings = current_app.config["SETTINGS"]
        enqueue(names.SUBSCRIPTIONS_CANCEL, args={"subscription_id": str(live.id)},
                user_id=actor_id, team_id=team_id,
                max_attempts=settings.payments_max_attempts)  # fmt: skip
