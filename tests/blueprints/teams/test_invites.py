"""Team invitations over HTTP: the emailed link, accepting, resending, revoking, declining,
expiry, tampering and rate limits.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from werkzeug.test import TestResponse

from extensions import db
from models import Job, TeamInvite, User
from services.core import tokens
from services.jobs import names
from tests.blueprints.teams.helpers import TEAMS, audit_rows, invite, ok, role_of
from tests.factories import auth_headers, give_plan, make_team, make_user, verify_email
from tests.support import Mailbox, Worker, problem_body


def link_token(invite_id: str) -> str:
    """The token the invitation email carries right now (the email task mints it the same way)."""
    db.session.expire_all()
    row = db.session.get(TeamInvite, uuid.UUID(invite_id))
    assert row is not None
    return tokens.mint_invite(row)


def accept(client: FlaskClient, token: str, user: User | None) -> TestResponse:
    headers: Mapping[str, str] = auth_headers(user) if user else {}
    return client.post(f"/api/v1/invites/{token}/accept", headers=headers)


# Invitations ------------------------------------------------------------------------------


def test_the_emailed_link_lets_the_verified_invitee_join(
    client: FlaskClient, worker: Worker, mailbox: Mailbox
) -> None:
    owner = make_user(name="Olga")
    team_id = make_team(owner, "Acme")
    created = invite(client, team_id, owner, "New.Person@Example.com", role="viewer")
    assert (created["status"], created["role"]) == ("pending", "viewer")
    assert "token" not in created and "token_hash" not in created

    email = mailbox.wait_for("new.person@example.com")
    found = re.search(r"/invites/(\S+)", Mailbox.text_of(email))
    assert found, Mailbox.text_of(email)
    token = unquote(found.group(1))
    # The job that sent it carries ids only, never the link's token.
    job = db.session.scalar(select(Job).where(Job.type == names.EMAIL_SEND))
    assert job is not None and token not in str(job.args)

    invitee = verify_email(make_user(email="new.person@example.com"))
    joined = ok(accept(client, token, invitee))["team"]
    assert (joined["id"], joined["role"]) == (str(team_id), "viewer")
    assert (
        ok(client.get(f"{TEAMS}/{team_id}", headers=auth_headers(invitee)))["team"]["role"]
        == "viewer"
    )
    assert ok(client.get(f"{TEAMS}/{team_id}/invites", headers=auth_headers(owner)))["items"] == []
    [row] = audit_rows(team_id, "invite.accepted")
    assert (row.actor_user_id, row.data["role"]) == (invitee.id, {"from": None, "to": "viewer"})
    # A used link cannot be used again.
    assert "already" in problem_body(accept(client, token, invitee), 409)["detail"]


def test_accepting_needs_the_invited_and_verified_address(client: FlaskClient) -> None:
    owner = make_user()
    team_id = make_team(owner)
    created = invite(client, team_id, owner, "invitee@example.com")
    token = link_token(created["id"])

    problem_body(accept(client, token, None), 401)
    unverified = make_user(email="invitee@example.com")
    unverified.email_verified_at = None  # signed up, never followed the verification link
    db.session.commit()
    assert "Verify your email" in problem_body(accept(client, token, unverified), 403)["detail"]
    someone_else = verify_email(make_user(email="someone@example.com"))
    assert "different email" in problem_body(accept(client, token, someone_else), 403)["detail"]

    assert role_of(client, team_id, owner, unverified) is None
    assert role_of(client, team_id, owner, someone_else) is None
    pending = ok(client.get(f"{TEAMS}/{team_id}/invites", headers=auth_headers(owner)))["items"]
    assert [(i["id"], i["status"]) for i in pending] == [(created["id"], "pending")]


def test_resending_kills_the_old_link(client: FlaskClient) -> None:
    owner = make_user()
    team_id = make_team(owner)
    created = invite(client, team_id, owner, "invitee@example.com")
    old_token = link_token(created["id"])

    url = f"{TEAMS}/{team_id}/invites/{created['id']}/resend"
    resent = ok(client.post(url, headers=auth_headers(owner)))["invite"]
    assert resent["expires_at"] >= created["expires_at"]
    emails = db.session.scalars(select(Job.args).where(Job.type == names.EMAIL_SEND)).all()
    assert emails == [{"template": "team_invite", "invite_id": created["id"]}] * 2

    invitee = verify_email(make_user(email="invitee@example.com"))
    stale = problem_body(accept(client, old_token, invitee), 422)
    assert "newer invitation" in stale["detail"]
    ok(accept(client, link_token(created["id"]), invitee))
    assert role_of(client, team_id, owner, invitee) == "member"
    assert [r.subject_id for r in audit_rows(team_id, "invite.resent")] == [created["id"]]


def test_a_revoked_invitation_cannot_be_accepted(client: FlaskClient) -> None:
    owner = make_user()
    team_id = make_team(owner)
    created = invite(client, team_id, owner, "invitee@example.com")
    token = link_token(created["id"])
    url = f"{TEAMS}/{team_id}/invites/{created['id']}"

    assert client.delete(url, headers=auth_headers(owner)).status_code == 204
    invitee = verify_email(make_user(email="invitee@example.com"))
    assert "revoked" in problem_body(accept(client, token, invitee), 409)["detail"]
    assert ok(client.get(f"{TEAMS}/{team_id}/invites", headers=auth_headers(owner)))["items"] == []
    problem_body(client.delete(url, headers=auth_headers(owner)), 409)
    [row] = audit_rows(team_id, "invite.revoked")
    assert row.data == {"status": {"from": "pending", "to": "revoked"}}
    # The address may be invited afresh.
    invite(client, team_id, owner, "invitee@example.com")


def test_declining_closes_the_invitation(client: FlaskClient) -> None:
    owner = make_user()
    team_id = make_team(owner)
    created = invite(client, team_id, owner, "invitee@example.com")
    token = link_token(created["id"])

    # The link alone is enough to say no: no account needed.
    assert client.post(f"/api/v1/invites/{token}/decline").status_code == 204
    invitee = verify_email(make_user(email="invitee@example.com"))
    problem_body(accept(client, token, invitee), 409)
    problem_body(client.post(f"/api/v1/invites/{token}/decline"), 409)
    assert ok(client.get(f"{TEAMS}/{team_id}/invites", headers=auth_headers(owner)))["items"] == []
    [row] = audit_rows(team_id, "invite.declined")
    assert row.data == {"status": {"from": "pending", "to": "declined"}}


def test_an_expired_invitation_is_refused_until_resent(client: FlaskClient) -> None:
    owner = make_user()
    team_id = make_team(owner)
    created = invite(client, team_id, owner, "invitee@example.com")
    db.session.execute(
        update(TeamInvite)
        .where(TeamInvite.id == uuid.UUID(created["id"]))
        .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
    )
    db.session.commit()
    invitee = verify_email(make_user(email="invitee@example.com"))

    assert (
        "expired" in problem_body(accept(client, link_token(created["id"]), invitee), 422)["detail"]
    )
    listed = ok(client.get(f"{TEAMS}/{team_id}/invites", headers=auth_headers(owner)))["items"]
    assert [i["status"] for i in listed] == ["expired"]
    ok(
        client.post(
            f"{TEAMS}/{team_id}/invites/{created['id']}/resend", headers=auth_headers(owner)
        )
    )
    ok(accept(client, link_token(created["id"]), invitee))


def test_a_tampered_link_is_refused(client: FlaskClient) -> None:
    user = verify_email(make_user())
    body = problem_body(accept(client, "not-a-real-token", user), 422)
    assert "token" in body["errors"]


def test_inviting_a_member_or_an_address_already_invited_is_409(client: FlaskClient) -> None:
    owner, member = make_user(), make_user(email="Member@example.com")
    team_id = make_team(owner, members=[(member, "member")])
    headers = auth_headers(owner)
    url = f"{TEAMS}/{team_id}/invites"

    problem_body(client.post(url, json={"email": "member@EXAMPLE.com"}, headers=headers), 409)
    first = invite(client, team_id, owner, "new@example.com")
    again = problem_body(client.post(url, json={"email": "NEW@example.com"}, headers=headers), 409)
    assert again["invite_id"] == first["id"]
    assert "resend" in again["detail"]


def test_invitations_are_rate_limited(client: FlaskClient) -> None:
    owner = make_user()
    team_id = make_team(owner)
    give_plan(team_id, "business")  # seats for all 30, so only the rate limit stops them
    url = f"{TEAMS}/{team_id}/invites"
    statuses = [
        client.post(
            url, json={"email": f"p{i}@example.com"}, headers=auth_headers(owner)
        ).status_code
        for i in range(31)
    ]
    assert statuses == [201] * 30 + [429]  # settings.ratelimit_invites = 30/hour
    count = db.session.scalar(select(func.count()).select_from(TeamInvite))
    assert count == 30
