"""Team invitations: invite by email, resend, revoke, and accept or decline by link.

The link's token is minted by the email task from the invite id and bound to the
invite's `token_hash`, a random nonce stored here: a resend rotates the nonce (old links
die), and accepting, declining or revoking closes the invite. No raw token is stored
or queued.

A declined invitation is closed like a revoked one (`revoked_at`); the audit trail
records which of the two happened.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from extensions import db
from models import Team, TeamInvite, TeamMember, User
from services.core import permissions, plans, tokens
from services.core.audit import record_audit
from services.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from services.core.pagination import Page, paginate
from services.core.permissions import Membership
from services.insights import search
from services.messaging import mail
from services.messaging.notifications import notify
from services.teams.teams import load_membership

MAIL_TEMPLATE = "team_invite"


def invite_status(invite: TeamInvite, now: datetime | None = None) -> str:
    """pending | expired | accepted | revoked, as a client would name it."""
    if invite.accepted_at is not None:
        return "accepted"
    if invite.revoked_at is not None:
        return "revoked"
    return "expired" if invite.expires_at <= (now or datetime.now(UTC)) else "pending"


def list_invites(membership: Membership, *, limit: int, cursor: str | None) -> Page[TeamInvite]:
    """The team's open invitations (pending or expired), newest first."""
    query = select(TeamInvite).where(
        TeamInvite.team_id == membership.team_id,
        TeamInvite.accepted_at.is_(None),
        TeamInvite.revoked_at.is_(None),
    )
    return paginate(query, TeamInvite, limit, cursor)


def create_invite(user: User, team_id: uuid.UUID, email: str, role: str) -> TeamInvite:
    """Invite an address with a role (admin+) and queue the email. One transaction."""
    actor = load_membership(user, team_id, "invites.create", lock=True)
    refusal = permissions.assignment_refusal(actor.role, role)
    if refusal:
        raise Forbidden(refusal)
    already_member = db.session.scalar(
        select(TeamMember.id)
        .join(User, User.id == TeamMember.user_id)
        .where(TeamMember.team_id == team_id, func.lower(User.email) == email.lower())
    )
    if already_member is not None:
        raise Conflict("This person is already a member of the team.")
    pending = db.session.scalar(
        select(TeamInvite).where(
            TeamInvite.team_id == team_id,
            func.lower(TeamInvite.email) == email.lower(),
            TeamInvite.accepted_at.is_(None),
            TeamInvite.revoked_at.is_(None),
        )
    )
    if pending is not None:
        raise Conflict(
            "An invitation to this address is already open; resend it instead.",
            extra={"invite_id": str(pending.id)},
        )
    plans.require_seat_for_invite(team_id)
    invite = TeamInvite(
        id=uuid.uuid4(),
        team_id=team_id,
        email=email,
        role=role,
        token_hash=secrets.token_hex(32),
        invited_by_id=user.id,
        expires_at=_expiry(),
    )
    db.session.add(invite)
    try:
        db.session.flush()
    except IntegrityError:
        # Only a nonce collision can get here (the team lock serialises the email check).
        db.session.rollback()
        raise Conflict("The invitation could not be created; try again.") from None
    mail.queue_email(MAIL_TEMPLATE, invite_id=invite.id)
    _notify_invitee(invite, user)
    record_audit(
        "invite.created",
        actor_id=user.id,
        team_id=team_id,
        subject_type="invite",
        subject_id=invite.id,
        data={"role": {"from": None, "to": role}},
    )
    db.session.commit()
    return invite


def resend_invite(user: User, team_id: uuid.UUID, invite_id: uuid.UUID) -> TeamInvite:
    """Email a fresh link with a new expiry; links sent before stop working."""
    load_membership(user, team_id, "invites.create", lock=True)
    invite = _team_invite(team_id, invite_id)
    _require_open(invite, check_expiry=False)  # resending is how an expired invite revives
    if invite_status(invite) == "expired":
        plans.require_seat_for_invite(team_id)  # it is about to take a seat again
    before = invite.expires_at
    invite.token_hash = secrets.token_hex(32)
    invite.expires_at = _expiry()
    mail.queue_email(MAIL_TEMPLATE, invite_id=invite.id)
    record_audit(
        "invite.resent",
        actor_id=user.id,
        team_id=team_id,
        subject_type="invite",
        subject_id=invite.id,
        data={"expires_at": {"from": before.isoformat(), "to": invite.expires_at.isoformat()}},
    )
    db.session.commit()
    return invite


def revoke_invite(user: User, team_id: uuid.UUID, invite_id: uuid.UUID) -> None:
    """Close an open invitation (admin+); its link stops working. One transaction."""
    load_membership(user, team_id, "invites.revoke", lock=True)
    invite = _team_invite(team_id, invite_id)
    _require_open(invite, check_expiry=False)
    _close(invite, "invite.revoked", user.id, "revoked")
    db.session.commit()


def accept_invite(user: User, token: str) -> tuple[Team, TeamMember]:
    """Join the team as the invited role, if signed in with the invited, verified address."""
    invite, team = _invite_for_link(token)
    if user.email_verified_at is None:
        raise Forbidden("Verify your email address before accepting an invitation.")
    if user.email.lower() != invite.email.lower():
        raise Forbidden(
            "This invitation was sent to a different email address; sign in with that "
            "address to accept it."
        )
    existing = db.session.scalar(
        select(TeamMember.id).where(TeamMember.team_id == team.id, TeamMember.user_id == user.id)
    )
    if existing is not None:
        raise Conflict("You are already a member of this team.")
    plans.require_seat_for_member(team.id)
    invite.accepted_at = datetime.now(UTC)
    member = TeamMember(id=uuid.uuid4(), team_id=team.id, user_id=user.id, role=invite.role)
    db.session.add(member)
    # Indexed in this transaction (not by a task after commit): atomic, cheap for one row.
    search.index_document(team.id, "member", member.id, user.name, user.email)
    record_audit(
        "invite.accepted",
        actor_id=user.id,
        team_id=team.id,
        subject_type="user",
        subject_id=user.id,
        data={"role": {"from": None, "to": invite.role}, "invite_id": str(invite.id)},
    )
    db.session.commit()
    return team, member


def decline_invite(token: str, user: User | None) -> None:
    """Turn an invitation down; holding the emailed link is enough (no account needed)."""
    invite, _team = _invite_for_link(token)
    _close(invite, "invite.declined", user.id if user else None, "declined")
    db.session.commit()


def _invite_for_link(token: str) -> tuple[TeamInvite, Team]:
    """The open invite behind an emailed link, with its team locked (in that order)."""
    invite_id, nonce = tokens.read_invite(token)
    found = db.session.get(TeamInvite, invite_id)
    team = None
    if found is not None:
        # The team lock comes first, as in every team change, so locks are always taken
        # in the same order (team, then invite) and cannot deadlock.
        team = db.session.scalar(
            select(Team)
            .where(Team.id == found.team_id, Team.deleted_at.is_(None))
            .with_for_update()
        )
    invite = db.session.scalar(
        select(TeamInvite)
        .where(TeamInvite.id == invite_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if invite is None or team is None:
        raise NotFound("This invitation no longer exists.")
    if not tokens.matches(nonce, invite.token_hash):
        raise ValidationFailed(
            "This link was replaced by a newer invitation email; use the latest one.",
            errors={"token": ["Superseded by a newer invitation."]},
        )
    _require_open(invite, check_expiry=True)
    return invite, team


def _require_open(invite: TeamInvite, *, check_expiry: bool) -> None:
    status = invite_status(invite)
    if status == "accepted":
        raise Conflict("This invitation has already been accepted.")
    if status == "revoked":
        raise Conflict("This invitation was revoked or declined; ask for a new one.")
    if check_expiry and status == "expired":
        raise ValidationFailed(
            "This invitation has expired; ask for a new one.",
            errors={"token": ["The invitation has expired."]},
        )


def _team_invite(team_id: uuid.UUID, invite_id: uuid.UUID) -> TeamInvite:
    invite = db.session.scalar(
        select(TeamInvite)
        .where(TeamInvite.id == invite_id, TeamInvite.team_id == team_id)
        .with_for_update()
    )
    if invite is None:
        raise NotFound("No such invitation in this team.")
    return invite


def _close(invite: TeamInvite, action: str, actor_id: uuid.UUID | None, to: str) -> None:
    before = invite_status(invite)
    invite.revoked_at = datetime.now(UTC)
    record_audit(
        action,
        actor_id=actor_id,
        team_id=invite.team_id,
        subject_type="invite",
        subject_id=invite.id,
        data={"status": {"from": before, "to": to}},
    )


def _expiry() -> datetime:
    return datetime.now(UTC) + timedelta(days=current_app.config["SETTINGS"].invite_days)


def _notify_invitee(invite: TeamInvite, inviter: User) -> None:
    """An invitee who already has an account also sees the invitation in the app."""

    invitee = db.session.scalar(select(User).where(func.lower(User.email) == invite.email.lower()))
    team = db.session.get(Team, invite.team_id)
    if invitee is None or team is None:
        return
    # email=False: the invitation email itself is on its way.
    data = {"team": team.name, "inviter": inviter.name, "role": invite.role}
    notify([invitee.id], "invite_received", data, event_key=f"invite:{invite.id}", email=False)
