"""HTTP for teams: the team, its members, invitations and audit log.

Every `/teams/<team_id>/...` view is guarded by `@team_permission(action)` (see
`services/core/permissions.py` for who may do what); the invitation links (`/invites/<token>`)
are addressed by the emailed token instead.
"""

from __future__ import annotations

import uuid
from typing import Any

from apiflask import APIBlueprint
from flask import request, url_for

from blueprints.common.auth import auth_required, authenticate, me
from blueprints.common.idempotency import idempotent
from blueprints.common.openapi import header_ref, operation_doc
from blueprints.common.ratelimits import configured, limiter
from blueprints.common.schemas import ListQuery
from blueprints.common.teams import current_membership, team_permission
from blueprints.jobs.schemas import job_out
from blueprints.jobs.views import accepted
from blueprints.teams.schemas import (
    AuditLogOut,
    AuditLogPage,
    AuditLogQuery,
    ChainReportOut,
    ChainVerifyQuery,
    InviteEnvelope,
    InviteIn,
    InviteOut,
    InvitePage,
    MemberEnvelope,
    MemberOut,
    MemberPage,
    RoleIn,
    TeamDeletionEnvelope,
    TeamEnvelope,
    TeamIn,
    TeamOut,
    TeamPage,
    TeamPatch,
    TransferIn,
)
from models import AuditLog, TeamInvite, TeamMember, User
from services.core import audit_logs
from services.teams import invites, members, teams
from services.teams.teams import TeamWithRole

bp = APIBlueprint("teams", __name__, url_prefix="/api/v1/teams", tag="teams")
invites_bp = APIBlueprint("invites", __name__, url_prefix="/api/v1/invites", tag="teams")


def _per_user() -> str:
    return f"user:{me().id}"


def team_out(found: TeamWithRole) -> TeamOut:
    team = found.team
    return TeamOut.model_validate(
        {"id": team.id, "name": team.name, "is_personal": team.is_personal,
         "role": found.role, "created_at": team.created_at}
    )  # fmt: skip


def member_out(member: TeamMember, user: User) -> MemberOut:
    return MemberOut.model_validate(
        {"user_id": user.id, "name": user.name, "email": user.email, "role": member.role,
         "joined_at": member.created_at}
    )  # fmt: skip


def invite_out(invite: TeamInvite) -> InviteOut:
    return InviteOut.model_validate(
        {"id": invite.id, "email": invite.email, "role": invite.role,
         "status": invites.invite_status(invite), "expires_at": invite.expires_at,
         "invited_by_id": invite.invited_by_id, "created_at": invite.created_at}
    )  # fmt: skip


def audit_out(row: AuditLog) -> AuditLogOut:
    return AuditLogOut(
        id=row.id, action=row.action, actor_id=row.actor_user_id, subject_type=row.subject_type,
        subject_id=row.subject_id, data=row.data, ip=str(row.ip) if row.ip else None,
        request_id=row.request_id, created_at=row.created_at,
    )  # fmt: skip


# Teams ------------------------------------------------------------------------------------


@bp.get("")
@auth_required
@bp.input(ListQuery, location="query", arg_name="query")
@bp.output(TeamPage)
def list_teams(query: ListQuery) -> TeamPage:
    """The teams I belong to, with my role in each."""
    page = teams.list_my_teams(me(), limit=query.limit, cursor=query.cursor)
    return TeamPage(items=[team_out(t) for t in page.items], next_cursor=page.next_cursor)


@bp.post("")
@auth_required
@limiter.limit(configured("ratelimit_team_create"), key_func=_per_user)
@bp.input(TeamIn, location="json", arg_name="body")
@idempotent()
@bp.output(TeamEnvelope, status_code=201)
@operation_doc(responses={201: {"headers": {"Location": header_ref("Location")}}})
def create_team(body: TeamIn) -> Any:
    """Create a team; I become its owner."""
    created = teams.create_team(me(), body.name)
    location = url_for("teams.get_team", team_id=created.team.id)
    return TeamEnvelope(team=team_out(created)), 201, {"Location": location}


@bp.get("/<uuid:team_id>")
@team_permission("team.read")
@bp.output(TeamEnvelope)
def get_team(team_id: uuid.UUID) -> TeamEnvelope:
    """One of my teams."""
    return TeamEnvelope(team=team_out(teams.get_team(current_membership())))


@bp.patch("/<uuid:team_id>")
@team_permission("team.update")
@bp.input(TeamPatch, location="json", arg_name="body")
@bp.output(TeamEnvelope)
def update_team(team_id: uuid.UUID, body: TeamPatch) -> TeamEnvelope:
    """Rename the team."""
    updated = teams.update_team(me(), team_id, body.model_dump(exclude_unset=True))
    return TeamEnvelope(team=team_out(updated))


@bp.delete("/<uuid:team_id>")
@team_permission("team.delete")
@bp.output(TeamDeletionEnvelope, status_code=202)
@bp.doc(responses={409: "A personal team cannot be deleted"})
def delete_team(team_id: uuid.UUID) -> Any:
    """Delete the team in the background (members lose access when the job has run)."""
    job = teams.request_team_deletion(me(), team_id)
    return accepted(TeamDeletionEnvelope(job=job_out(job)), job.id)


@bp.post("/<uuid:team_id>/transfer-ownership")
@team_permission("ownership.transfer")
@bp.input(TransferIn, location="json", arg_name="body")
@idempotent()
@bp.output(MemberEnvelope)
@bp.doc(responses={409: "A personal team's ownership cannot move"})
def transfer_ownership(team_id: uuid.UUID, body: TransferIn) -> MemberEnvelope:
    """Make another member the owner; I become an admin."""
    return MemberEnvelope(
        member=member_out(*members.transfer_ownership(me(), team_id, body.user_id))
    )


# Members ----------------------------------------------------------------------------------


@bp.get("/<uuid:team_id>/members")
@team_permission("members.read")
@bp.input(ListQuery, location="query", arg_name="query")
@bp.output(MemberPage)
def list_members(team_id: uuid.UUID, query: ListQuery) -> MemberPage:
    """The team's members and their roles."""
    page = members.list_members(current_membership(), limit=query.limit, cursor=query.cursor)
    return MemberPage(items=[member_out(m, u) for m, u in page.items], next_cursor=page.next_cursor)


@bp.patch("/<uuid:team_id>/members/<uuid:user_id>")
@team_permission("members.update_role")
@bp.input(RoleIn, location="json", arg_name="body")
@bp.output(MemberEnvelope)
@bp.doc(responses={409: "The team's last owner cannot be demoted"})
def update_member(team_id: uuid.UUID, user_id: uuid.UUID, body: RoleIn) -> MemberEnvelope:
    """Change a member's role (never above my own; owners only by owners)."""
    member, account = members.update_member_role(me(), team_id, user_id, body.role)
    return MemberEnvelope(member=member_out(member, account))


@bp.delete("/<uuid:team_id>/members/<uuid:user_id>")
@team_permission("members.remove", on_self="members.leave")
@bp.output({}, status_code=204)
@bp.doc(responses={409: "The team's last owner cannot leave"})
def remove_member(team_id: uuid.UUID, user_id: uuid.UUID) -> tuple[str, int]:
    """Remove a member; with my own id, leave the team."""
    members.remove_member(me(), team_id, user_id)
    return "", 204


# Invitations ------------------------------------------------------------------------------


@bp.get("/<uuid:team_id>/invites")
@team_permission("invites.read")
@bp.input(ListQuery, location="query", arg_name="query")
@bp.output(InvitePage)
def list_invites(team_id: uuid.UUID, query: ListQuery) -> InvitePage:
    """Open invitations (pending or expired)."""
    page = invites.list_invites(current_membership(), limit=query.limit, cursor=query.cursor)
    return InvitePage(items=[invite_out(i) for i in page.items], next_cursor=page.next_cursor)


@bp.post("/<uuid:team_id>/invites")
@team_permission("invites.create")
@limiter.shared_limit(configured("ratelimit_invites"), scope="team-invites", key_func=_per_user)
@bp.input(InviteIn, location="json", arg_name="body")
@idempotent()
@bp.output(InviteEnvelope, status_code=201)
@bp.doc(responses={409: "Already a member or invited, or the plan's seats are full"})
def create_invite(team_id: uuid.UUID, body: InviteIn) -> InviteEnvelope:
    """Invite someone by email with a role; they get a link to accept."""
    invite = invites.create_invite(me(), team_id, str(body.email), body.role)
    return InviteEnvelope(invite=invite_out(invite))


@bp.delete("/<uuid:team_id>/invites/<uuid:invite_id>")
@team_permission("invites.revoke")
@bp.output({}, status_code=204)
@bp.doc(responses={409: "The invitation was already accepted, revoked or declined"})
def revoke_invite(team_id: uuid.UUID, invite_id: uuid.UUID) -> tuple[str, int]:
    """Revoke an invitation; its link stops working."""
    invites.revoke_invite(me(), team_id, invite_id)
    return "", 204


@bp.post("/<uuid:team_id>/invites/<uuid:invite_id>/resend")
@team_permission("invites.create")
@limiter.shared_limit(configured("ratelimit_invites"), scope="team-invites", key_func=_per_user)
@idempotent()
@bp.output(InviteEnvelope)
@bp.doc(responses={409: "The invitation was already accepted, revoked or declined"})
def resend_invite(team_id: uuid.UUID, invite_id: uuid.UUID) -> InviteEnvelope:
    """Email a fresh link with a new expiry; earlier links stop working."""
    return InviteEnvelope(invite=invite_out(invites.resend_invite(me(), team_id, invite_id)))


@invites_bp.post("/<token>/accept")
@auth_required(api_keys=False)
@idempotent()
@invites_bp.output(TeamEnvelope)
@invites_bp.doc(responses={
    409: "Already a member, the invitation was used or revoked, or the plan is full",
})  # fmt: skip
def accept_invite(token: str) -> TeamEnvelope:
    """Join the team, signed in with the invited (verified) email address."""
    team, member = invites.accept_invite(me(), token)
    return TeamEnvelope(team=team_out(TeamWithRole(team, member.role)))


@invites_bp.post("/<token>/decline")
@idempotent()
@invites_bp.output({}, status_code=204)
@invites_bp.doc(responses={
    # Signing in is optional here, but credentials that are sent are checked.
    400: "Both Authorization and X-API-Key were sent",
    401: "The credentials sent are invalid",
    403: "An API key was sent: declining takes a signed-in user or none",
    409: "The invitation was already accepted, revoked or declined",
})  # fmt: skip
def decline_invite(token: str) -> tuple[str, int]:
    """Turn an invitation down (the link is enough; signing in is optional)."""
    signed_in = "Authorization" in request.headers or "X-API-Key" in request.headers
    invites.decline_invite(token, authenticate(api_keys=False) if signed_in else None)
    return "", 204


# Audit log --------------------------------------------------------------------------------


@bp.get("/<uuid:team_id>/audit-logs")
@team_permission("audit.read")
@bp.input(AuditLogQuery, location="query", arg_name="query")
@bp.output(AuditLogPage)
def list_audit_logs(team_id: uuid.UUID, query: AuditLogQuery) -> AuditLogPage:
    """The team's audit trail, newest first; filter by action, actor and time (from <= t < to)."""
    page = audit_logs.list_team_audit_logs(
        current_membership(), action=query.action, actor_id=query.actor_id,
        since=query.from_, until=query.to, limit=query.limit, cursor=query.cursor,
    )  # fmt: skip
    return AuditLogPage(items=[audit_out(r) for r in page.items], next_cursor=page.next_cursor)


@bp.get("/<uuid:team_id>/audit-logs/verify")
@team_permission("audit.read")
@bp.input(ChainVerifyQuery, location="query", arg_name="query")
@bp.output(ChainReportOut)
def verify_audit_logs(team_id: uuid.UUID, query: ChainVerifyQuery) -> ChainReportOut:
    """Check the audit trail's signed chain up to its sealed head, a bounded page per call:
    is it intact, and where does it break? Follow next_cursor until it is null."""
    report = audit_logs.verify_team_chain(current_membership(), query.cursor)
    return ChainReportOut(
        intact=report.intact, rows_checked=report.rows_checked,
        first_bad_id=report.first_bad_id, reason=report.reason,
        complete=report.complete, next_cursor=report.next_cursor,
    )  # fmt: skip
