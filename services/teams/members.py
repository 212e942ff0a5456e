"""Team members: list, change roles, remove or leave, transfer ownership.

Every change runs under the team's row lock (`load_membership(..., lock=True)`), so the
"at least one owner" rule cannot be raced, and writes an audit row with a before/after.
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select

from extensions import db
from models import Team, TeamMember, User
from services.core import permissions
from services.core.audit import record_audit
from services.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from services.core.pagination import Page, paginate
from services.core.permissions import Membership
from services.insights import search
from services.messaging.notifications import notify
from services.teams.teams import load_membership

OWNER, ADMIN = permissions.OWNER, permissions.ADMIN
SEARCH_TYPE = "member"


def list_members(
    membership: Membership, *, limit: int, cursor: str | None
) -> Page[tuple[TeamMember, User]]:
    """The team's members with their accounts, most recently joined first."""
    query = select(TeamMember).where(TeamMember.team_id == membership.team_id)
    page = paginate(query, TeamMember, limit, cursor)
    users = {
        user.id: user
        for user in db.session.scalars(
            select(User).where(User.id.in_([m.user_id for m in page.items]))
        )
    }
    return Page([(m, users[m.user_id]) for m in page.items], page.next_cursor)


def update_member_role(
    user: User, team_id: uuid.UUID, target_id: uuid.UUID, role: str
) -> tuple[TeamMember, User]:
    """Change a member's role within the caller's powers. One transaction."""
    actor = load_membership(user, team_id, "members.update_role", lock=True)
    target = _member(team_id, target_id)  # the caller's own row too: its role may change
    refusal = permissions.role_change_refusal(actor.role, target.role, role)
    if refusal:
        raise Forbidden(refusal)
    if target.role != role:
        if target.role == OWNER:
            _keep_an_owner(
                team_id, "The team's last owner cannot be demoted; transfer ownership first."
            )
        before, target.role = target.role, role
        _notify_role_change(target, before, role)
        record_audit(
            "member.role_changed",
            actor_id=user.id,
            team_id=team_id,
            subject_type="user",
            subject_id=target.user_id,
            data={"role": {"from": before, "to": role}},
        )
        # Indexed in this transaction (not by a task after commit): atomic, cheap for one row.
        account = _account(target)
        search.index_document(team_id, SEARCH_TYPE, target.id, account.name, account.email)
    db.session.commit()
    return target, _account(target)


def remove_member(user: User, team_id: uuid.UUID, target_id: uuid.UUID) -> None:
    """Remove a member (admin+), or leave the team when the target is the caller."""
    leaving = target_id == user.id
    actor = load_membership(
        user, team_id, "members.leave" if leaving else "members.remove", lock=True
    )
    target = _member(team_id, target_id)
    refusal = None if leaving else permissions.removal_refusal(actor.role, target.role)
    if refusal:
        raise Forbidden(refusal)
    if target.role == OWNER:
        _keep_an_owner(
            team_id,
            "The team's last owner cannot leave; transfer ownership first."
            if leaving
            else "The team's last owner cannot be removed; transfer ownership first.",
        )
    db.session.delete(target)
    # Indexed in this transaction (not by a task after commit): atomic, cheap for one row.
    search.remove_document(SEARCH_TYPE, target.id)
    record_audit(
        "member.left" if leaving else "member.removed",
        actor_id=user.id,
        team_id=team_id,
        subject_type="user",
        subject_id=target_id,
        data={"role": {"from": target.role, "to": None}},
    )
    db.session.commit()


def transfer_ownership(
    user: User, team_id: uuid.UUID, target_id: uuid.UUID
) -> tuple[TeamMember, User]:
    """Make another member the owner; the caller becomes an admin. One transaction."""
    load_membership(user, team_id, "ownership.transfer", lock=True)
    if target_id == user.id:
        raise ValidationFailed(
            "You already own this team.", errors={"user_id": ["Choose another member."]}
        )
    team = db.session.get(Team, team_id)
    if team is not None and team.is_personal:
        raise Conflict("A personal team belongs to its account; its ownership cannot move.")
    target = db.session.scalar(
        select(TeamMember).where(TeamMember.team_id == team_id, TeamMember.user_id == target_id)
    )
    if target is None:
        # The id comes from the body, so this is a validation failure, not a missing route.
        raise ValidationFailed(
            "The new owner must already be a member of the team.",
            errors={"user_id": ["Not a member of this team."]},
        )
    target_before = target.role
    caller = _member(team_id, user.id)
    target.role, caller.role = OWNER, ADMIN
    record_audit(
        "team.ownership_transferred",
        actor_id=user.id,
        team_id=team_id,
        subject_type="user",
        subject_id=target_id,
        data={
            "owner": {"from": str(user.id), "to": str(target_id)},
            "roles": {
                str(user.id): {"from": OWNER, "to": ADMIN},
                str(target_id): {"from": target_before, "to": OWNER},
            },
        },
    )
    db.session.commit()
    return target, _account(target)


def _member(team_id: uuid.UUID, user_id: uuid.UUID) -> TeamMember:
    member = db.session.scalar(
        select(TeamMember)
        .where(TeamMember.team_id == team_id, TeamMember.user_id == user_id)
        .execution_options(populate_existing=True)
    )
    if member is None:
        raise NotFound("No such member in this team.")
    return member


def _account(member: TeamMember) -> User:
    account = db.session.get(User, member.user_id)
    assert account is not None  # memberships cascade away with their user
    return account


def _keep_an_owner(team_id: uuid.UUID, detail: str) -> None:
    """409 if the only owner would stop being one (the caller holds the team's lock)."""
    owners = db.session.scalar(
        select(func.count())
        .select_from(TeamMember)
        .where(TeamMember.team_id == team_id, TeamMember.role == OWNER)
    )
    if (owners or 0) <= 1:
        raise Conflict(detail)


def _notify_role_change(member: TeamMember, before: str, after: str) -> None:

    team = db.session.get(Team, member.team_id)
    notify([member.user_id], "role_changed",
           {"team": team.name if team else "", "team_id": str(member.team_id), "role": after,
            "previous": before},
           event_key=f"role:{member.team_id}:{uuid.uuid4()}", team_id=member.team_id)  # fmt: skip
