"""Teams through the API: the team, members and roles, invitations, deletion, audit log."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select, text, update
from werkzeug.test import TestResponse

from extensions import db
from models import AuditLog, Job, Team, TeamInvite, User
from services.core import tokens
from services.jobs import names
from tests.factories import auth_headers, give_plan, make_team, make_user, verify_email
from tests.support import Mailbox, Worker, problem_body, wait_job

TEAMS = "/api/v1/teams"


def ok(response: TestResponse, status: int = 200) -> Any:
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


def role_of(client: FlaskClient, team_id: uuid.UUID, viewer: User, user: User) -> str | None:
    """`user`'s role as `viewer` sees it on the members page (None: not a member)."""
    items = ok(client.get(f"{TEAMS}/{team_id}/members", headers=auth_headers(viewer)))["items"]
    return next((m["role"] for m in items if m["user_id"] == str(user.id)), None)


def audit_rows(team_id: uuid.UUID, action: str) -> list[AuditLog]:
    db.session.expire_all()
    query = select(AuditLog).where(AuditLog.team_id == team_id, AuditLog.action == action)
    return list(db.session.scalars(query.order_by(AuditLog.id)))


def invite(
    client: FlaskClient, team_id: uuid.UUID, by: User, email: str, role: str = "member"
) -> dict[str, Any]:
    body = {"email": email, "role": role}
    response = client.post(f"{TEAMS}/{team_id}/invites", json=body, headers=auth_headers(by))
    created: dict[str, Any] = ok(response, 201)["invite"]
    return created


def link_token(invite_id: str) -> str:
    """The token the invitation email carries right now (the email task mints it the same way)."""
    db.session.expire_all()
    row = db.session.get(TeamInvite, uuid.UUID(invite_id))
    assert row is not None
    return tokens.mint_invite(row)


def accept(client: FlaskClient, token: str, user: User | None) -> TestResponse:
    headers: Mapping[str, str] = auth_headers(user) if user else {}
    return client.post(f"/api/v1/invites/{token}/accept", headers=headers)


# The team ---------------------------------------------------------------------------------


def test_creating_a_team_makes_me_its_owner(client: FlaskClient) -> None:
    me = make_user(name="Ann")
    response = client.post(TEAMS, json={"name": "Acme"}, headers=auth_headers(me))
    team = ok(response, 201)["team"]
    assert (team["name"], team["role"], team["is_personal"]) == ("Acme", "owner", False)
    assert response.headers["Location"] == f"{TEAMS}/{team['id']}"

    mine = ok(client.get(TEAMS, headers=auth_headers(me)))["items"]
    assert {(t["name"], t["role"]) for t in mine} == {("Acme", "owner"), ("Ann's team", "owner")}
    assert ok(client.get(response.headers["Location"], headers=auth_headers(me)))["team"] == team
    [created] = audit_rows(uuid.UUID(team["id"]), "team.created")
    assert created.actor_user_id == me.id
    assert created.data == {"name": {"from": None, "to": "Acme"}}


def test_my_teams_are_listed_with_my_role_in_pages(client: FlaskClient) -> None:
    me, boss = make_user(), make_user()
    for name in ("One", "Two"):
        make_team(me, name)
    make_team(boss, "Boss's", members=[(me, "viewer")])
    make_team(boss, "Not mine")

    seen: list[tuple[str, str]] = []
    url: str | None = f"{TEAMS}?limit=2"
    while url:
        page = ok(client.get(url, headers=auth_headers(me)))
        assert len(page["items"]) <= 2
        seen += [(t["name"], t["role"]) for t in page["items"]]
        url = f"{TEAMS}?limit=2&cursor={page['next_cursor']}" if page["next_cursor"] else None

    # Most recently joined first; "Not mine" never shows.
    assert seen == [
        ("Boss's", "viewer"), ("Two", "owner"), ("One", "owner"), ("Test User's team", "owner"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Acme", "team_id": str(uuid.uuid4())}, "team_id"),
        ({"name": "Acme", "is_personal": True}, "is_personal"),
        ({"name": "Acme", "deleted_at": "2020-01-01T00:00:00Z"}, "deleted_at"),
        ({"name": "Acme", "role": "owner"}, "role"),
        ({"name": "Acme", "created_by_id": str(uuid.uuid4())}, "created_by_id"),
        ({"name": ""}, "name"),
    ],
)
def test_create_rejects_fields_that_cannot_be_set(
    client: FlaskClient, body: dict[str, Any], field: str
) -> None:
    me = make_user()
    rejected = problem_body(client.post(TEAMS, json=body, headers=auth_headers(me)), 422)
    assert field in rejected["errors"]
    assert db.session.scalar(select(func.count()).select_from(Team)) == 1  # the personal team


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "New", "is_admin": True}, "is_admin"),
        ({"name": "New", "deleted_at": None}, "deleted_at"),
        ({"is_personal": True}, "is_personal"),
        ({"id": str(uuid.uuid4())}, "id"),
        ({"role": "owner"}, "role"),
        ({"name": None}, "name"),
        ({}, "_schema"),  # nothing to change
    ],
)
def test_update_rejects_fields_that_cannot_be_set(
    client: FlaskClient, body: dict[str, Any], field: str
) -> None:
    admin, owner = make_user(), make_user()
    team_id = make_team(owner, "Acme", members=[(admin, "admin")])
    response = client.patch(f"{TEAMS}/{team_id}", json=body, headers=auth_headers(admin))
    assert field in problem_body(response, 422)["errors"]
    db.session.expire_all()
    team = db.session.get(Team, team_id)
    assert team is not None
    assert (team.name, team.is_personal, team.deleted_at) == ("Acme", False, None)
    assert role_of(client, team_id, owner, admin) == "admin"
    assert db.session.get(User, admin.id).is_admin is False  # type: ignore[union-attr]


def test_role_changes_reject_fields_beyond_the_role(client: FlaskClient) -> None:
    owner, member = make_user(), make_user()
    team_id = make_team(owner, members=[(member, "member")])
    url = f"{TEAMS}/{team_id}/members/{member.id}"
    body = {"role": "admin", "team_id": str(uuid.uuid4()), "user_id": str(owner.id)}
    problem_body(client.patch(url, json=body, headers=auth_headers(owner)), 422)
    assert role_of(client, team_id, owner, member) == "member"


def test_team_creation_is_rate_limited_per_user(client: FlaskClient) -> None:
    eager, other = make_user(), make_user()
    responses = [
        client.post(TEAMS, json={"name": f"T{i}"}, headers=auth_headers(eager)) for i in range(11)
    ]
    # settings.ratelimit_team_create is 10/minute
    assert [r.status_code for r in responses] == [201] * 10 + [429]
    problem_body(responses[-1], 429)
    assert int(responses[-1].headers["Retry-After"]) > 0
    ok(client.post(TEAMS, json={"name": "Mine"}, headers=auth_headers(other)), 201)


def test_renaming_is_audited_with_before_and_after(client: FlaskClient) -> None:
    owner, admin = make_user(), make_user()
    team_id = make_team(owner, "Acme", members=[(admin, "admin")])
    response = client.patch(
        f"{TEAMS}/{team_id}", json={"name": "Acme Ltd"}, headers=auth_headers(admin)
    )
    assert ok(response)["team"]["name"] == "Acme Ltd"
    assert ok(response)["team"]["role"] == "admin"
    [renamed] = audit_rows(team_id, "team.updated")
    assert renamed.actor_user_id == admin.id
    assert renamed.data == {"name": {"from": "Acme", "to": "Acme Ltd"}}


def test_non_members_cannot_tell_a_team_exists(client: FlaskClient) -> None:
    owner, stranger = make_user(), make_user()
    team_id = make_team(owner)
    real = problem_body(client.get(f"{TEAMS}/{team_id}", headers=auth_headers(stranger)), 404)
    fake = problem_body(client.get(f"{TEAMS}/{uuid.uuid4()}", headers=auth_headers(stranger)), 404)
    assert real["detail"] == fake["detail"] == "No such team."
    # Even with a body that would not validate, the answer is the same 404.
    response = client.patch(f"{TEAMS}/{team_id}", json={"bogus": 1}, headers=auth_headers(stranger))
    assert problem_body(response, 404)["detail"] == "No such team."


def test_a_personal_team_cannot_be_deleted(client: FlaskClient) -> None:
    me = make_user()
    [personal] = ok(client.get(TEAMS, headers=auth_headers(me)))["items"]
    body = problem_body(client.delete(f"{TEAMS}/{personal['id']}", headers=auth_headers(me)), 409)
    assert "personal" in body["detail"]
    assert db.session.scalar(select(func.count()).select_from(Job)) == 0


def test_deleting_a_team_runs_as_a_job_then_members_lose_it(
    client: FlaskClient, worker: Worker
) -> None:
    owner, member = make_user(), make_user()
    team_id = make_team(owner, members=[(member, "member")])
    invite(client, team_id, owner, "later@example.com")
    problem_body(client.delete(f"{TEAMS}/{team_id}", headers=auth_headers(member)), 403)

    response = client.delete(f"{TEAMS}/{team_id}", headers=auth_headers(owner))
    job = ok(response, 202)["job"]
    assert response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert job["type"] == "teams.delete"
    assert job["status"] in ("queued", "running", "succeeded")

    done = wait_job(job["id"], "succeeded", describe=worker.describe)
    assert done.result == {"team_id": str(team_id), "members_removed": 2, "invites_removed": 1}
    for user in (owner, member):
        problem_body(client.get(f"{TEAMS}/{team_id}", headers=auth_headers(user)), 404)
        names = [t["name"] for t in ok(client.get(TEAMS, headers=auth_headers(user)))["items"]]
        assert "Acme" not in names
    db.session.expire_all()
    team = db.session.get(Team, team_id)
    assert team is not None and team.deleted_at is not None  # soft-deleted: history stays
    assert db.session.scalar(select(func.count()).select_from(TeamInvite)) == 0
    # The audit trail outlives the team and records who asked and what was removed.
    assert [r.actor_user_id for r in audit_rows(team_id, "team.created")] == [owner.id]
    [deleted] = audit_rows(team_id, "team.deleted")
    assert deleted.actor_user_id == owner.id
    assert (deleted.data["members_removed"], deleted.data["invites_removed"]) == (2, 1)


def test_deleting_again_while_the_job_is_pending_returns_the_same_job(
    client: FlaskClient,
) -> None:
    owner = make_user()
    team_id = make_team(owner)
    # A deletion already under way (no broker message: it stays pending for this test).
    pending = Job(
        id=uuid.uuid4(), type="teams.delete", queue="default", status="running",
        args={"team_id": str(team_id)}, user_id=owner.id, team_id=team_id,
    )  # fmt: skip
    db.session.add(pending)
    db.session.commit()

    response = client.delete(f"{TEAMS}/{team_id}", headers=auth_headers(owner))
    assert ok(response, 202)["job"]["id"] == str(pending.id)
    assert response.headers["Location"] == f"/api/v1/jobs/{pending.id}"
    assert db.session.scalar(select(func.count()).select_from(Job)) == 1


# Members and roles ------------------------------------------------------------------------


def test_members_are_listed_with_their_roles(client: FlaskClient) -> None:
    owner, viewer = make_user(name="Olga"), make_user(name="Vic")
    team_id = make_team(owner, members=[(viewer, "viewer")])
    items = ok(client.get(f"{TEAMS}/{team_id}/members", headers=auth_headers(viewer)))["items"]
    assert {(m["name"], m["email"], m["role"]) for m in items} == {
        ("Olga", owner.email, "owner"),
        ("Vic", viewer.email, "viewer"),
    }


def test_an_admin_changes_a_role_and_the_audit_log_shows_the_diff(client: FlaskClient) -> None:
    owner, admin, member = make_user(), make_user(), make_user()
    team_id = make_team(owner, members=[(admin, "admin"), (member, "member")])
    url = f"{TEAMS}/{team_id}/members/{member.id}"
    changed = ok(client.patch(url, json={"role": "admin"}, headers=auth_headers(admin)))["member"]
    assert (changed["user_id"], changed["role"]) == (str(member.id), "admin")
    assert role_of(client, team_id, owner, member) == "admin"
    [row] = audit_rows(team_id, "member.role_changed")
    assert (row.actor_user_id, row.subject_id) == (admin.id, str(member.id))
    assert row.data == {"role": {"from": "member", "to": "admin"}}


def test_admins_cannot_make_owners_nor_touch_an_owner(client: FlaskClient) -> None:
    owner, admin, member = make_user(), make_user(), make_user()
    team_id = make_team(owner, members=[(admin, "admin"), (member, "member")])
    headers = auth_headers(admin)

    promote = client.patch(
        f"{TEAMS}/{team_id}/members/{member.id}", json={"role": "owner"}, headers=headers
    )
    assert "above your own" in problem_body(promote, 403)["detail"]
    demote = client.patch(
        f"{TEAMS}/{team_id}/members/{owner.id}", json={"role": "viewer"}, headers=headers
    )
    assert "owner" in problem_body(demote, 403)["detail"]
    remove = client.delete(f"{TEAMS}/{team_id}/members/{owner.id}", headers=headers)
    assert "owner" in problem_body(remove, 403)["detail"]
    invite_owner = client.post(
        f"{TEAMS}/{team_id}/invites",
        json={"email": "x@example.com", "role": "owner"},
        headers=headers,
    )
    problem_body(invite_owner, 422)  # owners are made by transfer, never by invitation
    assert role_of(client, team_id, owner, owner) == "owner"
    assert role_of(client, team_id, owner, member) == "member"


def test_nobody_raises_their_own_role(client: FlaskClient) -> None:
    owner, admin, member = make_user(), make_user(), make_user()
    team_id = make_team(owner, members=[(admin, "admin"), (member, "member")])

    own = f"{TEAMS}/{team_id}/members/{admin.id}"
    problem_body(client.patch(own, json={"role": "owner"}, headers=auth_headers(admin)), 403)
    mine = f"{TEAMS}/{team_id}/members/{member.id}"
    problem_body(client.patch(mine, json={"role": "admin"}, headers=auth_headers(member)), 403)
    assert role_of(client, team_id, owner, admin) == "admin"
    assert role_of(client, team_id, owner, member) == "member"


def test_the_last_owner_can_neither_leave_nor_be_demoted(client: FlaskClient) -> None:
    owner, other = make_user(), make_user()
    team_id = make_team(owner, members=[(other, "admin")])
    me = f"{TEAMS}/{team_id}/members/{owner.id}"
    headers = auth_headers(owner)

    assert "last owner" in problem_body(client.delete(me, headers=headers), 409)["detail"]
    demoted = client.patch(me, json={"role": "admin"}, headers=headers)
    assert "last owner" in problem_body(demoted, 409)["detail"]
    assert role_of(client, team_id, owner, owner) == "owner"

    # With a second owner, the first may step down and then leave.
    ok(
        client.patch(
            f"{TEAMS}/{team_id}/members/{other.id}", json={"role": "owner"}, headers=headers
        )
    )
    assert (
        ok(client.patch(me, json={"role": "admin"}, headers=headers))["member"]["role"] == "admin"
    )
    assert client.delete(me, headers=headers).status_code == 204
    assert role_of(client, team_id, other, owner) is None
    assert role_of(client, team_id, other, other) == "owner"


def test_a_member_leaves_and_loses_access(client: FlaskClient) -> None:
    owner, viewer = make_user(), make_user()
    team_id = make_team(owner, members=[(viewer, "viewer")])
    response = client.delete(f"{TEAMS}/{team_id}/members/{viewer.id}", headers=auth_headers(viewer))
    assert response.status_code == 204
    problem_body(client.get(f"{TEAMS}/{team_id}", headers=auth_headers(viewer)), 404)
    [left] = audit_rows(team_id, "member.left")
    assert (left.actor_user_id, left.data) == (viewer.id, {"role": {"from": "viewer", "to": None}})


def test_an_admin_removes_a_member(client: FlaskClient) -> None:
    owner, admin, member = make_user(), make_user(), make_user()
    team_id = make_team(owner, members=[(admin, "admin"), (member, "member")])
    url = f"{TEAMS}/{team_id}/members/{member.id}"
    assert client.delete(url, headers=auth_headers(admin)).status_code == 204
    problem_body(client.get(f"{TEAMS}/{team_id}", headers=auth_headers(member)), 404)
    assert (
        "No such member"
        in problem_body(client.delete(url, headers=auth_headers(admin)), 404)["detail"]
    )
    [removed] = audit_rows(team_id, "member.removed")
    assert (removed.actor_user_id, removed.subject_id) == (admin.id, str(member.id))


def test_transferring_ownership_makes_the_old_owner_an_admin(client: FlaskClient) -> None:
    owner, heir, stranger = make_user(), make_user(), make_user()
    team_id = make_team(owner, members=[(heir, "member")])
    url = f"{TEAMS}/{team_id}/transfer-ownership"

    not_member = client.post(url, json={"user_id": str(stranger.id)}, headers=auth_headers(owner))
    assert "user_id" in problem_body(not_member, 422)["errors"]
    response = client.post(url, json={"user_id": str(heir.id)}, headers=auth_headers(owner))
    new_owner = ok(response)["member"]
    assert (new_owner["user_id"], new_owner["role"]) == (str(heir.id), "owner")
    assert role_of(client, team_id, heir, owner) == "admin"
    assert role_of(client, team_id, heir, heir) == "owner"
    # The former owner is now an admin: transferring again is not theirs to do.
    again = client.post(url, json={"user_id": str(owner.id)}, headers=auth_headers(owner))
    problem_body(again, 403)
    [row] = audit_rows(team_id, "team.ownership_transferred")
    assert row.data["owner"] == {"from": str(owner.id), "to": str(heir.id)}
    assert row.data["roles"][str(owner.id)] == {"from": "owner", "to": "admin"}
    assert row.data["roles"][str(heir.id)] == {"from": "member", "to": "owner"}


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


# Audit log --------------------------------------------------------------------------------


def test_audit_log_filters_and_pages_newest_first(client: FlaskClient) -> None:
    owner, admin, member = make_user(), make_user(), make_user()
    team_id = make_team(owner, "Acme", members=[(admin, "admin"), (member, "member")])
    headers = auth_headers(admin)
    for name in ("B", "C"):
        ok(client.patch(f"{TEAMS}/{team_id}", json={"name": name}, headers=auth_headers(owner)))
    for role in ("viewer", "member"):
        url = f"{TEAMS}/{team_id}/members/{member.id}"
        ok(client.patch(url, json={"role": role}, headers=headers))
    base = f"{TEAMS}/{team_id}/audit-logs"

    every = ok(client.get(base, headers=headers))["items"]
    actions = [row["action"] for row in every]
    assert actions == [
        "member.role_changed", "member.role_changed", "team.updated", "team.updated",
        "team.created",
    ]  # fmt: skip
    assert [r["id"] for r in every] == sorted((r["id"] for r in every), reverse=True)

    renames = ok(client.get(f"{base}?action=team.updated", headers=headers))["items"]
    assert [r["data"]["name"]["to"] for r in renames] == ["C", "B"]
    by_admin = ok(client.get(f"{base}?actor_id={admin.id}", headers=headers))["items"]
    assert [r["data"]["role"]["to"] for r in by_admin] == ["member", "viewer"]

    cut = every[1]["created_at"]  # the first role change
    since = ok(client.get(base, query_string={"from": cut}, headers=headers))["items"]
    assert [r["id"] for r in since] == [every[0]["id"], every[1]["id"]]
    before = ok(client.get(base, query_string={"to": cut}, headers=headers))["items"]
    assert [r["id"] for r in before] == [r["id"] for r in every[2:]]

    pages, cursor = [], None
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = ok(client.get(base, query_string=query, headers=headers))
        pages.append([r["id"] for r in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [[r["id"] for r in every[i : i + 2]] for i in range(0, 5, 2)]
    problem_body(client.get(f"{base}?cursor=garbage", headers=headers), 422)


def test_verify_reports_a_tampered_audit_row(client: FlaskClient) -> None:
    owner, member = make_user(), make_user()
    team_id = make_team(owner, members=[(member, "member")])
    url = f"{TEAMS}/{team_id}/members/{member.id}"
    ok(client.patch(url, json={"role": "admin"}, headers=auth_headers(owner)))
    verify = f"{TEAMS}/{team_id}/audit-logs/verify"

    report = ok(client.get(verify, headers=auth_headers(owner)))
    assert report == {"intact": True, "rows_checked": 2, "first_bad_id": None, "reason": None,
                      "complete": True, "next_cursor": None}  # fmt: skip

    [changed] = audit_rows(team_id, "member.role_changed")
    # Someone with database access quietly rewrites history (past the append-only
    # trigger, as the tables' owner can; tests/blueprints/common/test_audit_security.py has more)...
    db.session.commit()
    for statement in (
        "ALTER TABLE audit_logs DISABLE TRIGGER audit_logs_append_only",
        """UPDATE audit_logs SET data = '{"role": {"from": "member", "to": "viewer"}}' """
        "WHERE id = :id",
        "ALTER TABLE audit_logs ENABLE TRIGGER audit_logs_append_only",
    ):
        db.session.execute(text(statement), {"id": changed.id})
    db.session.commit()
    db.session.expire_all()  # the test shares its session with the app's requests

    report = ok(client.get(verify, headers=auth_headers(owner)))
    assert (report["intact"], report["first_bad_id"]) == (False, changed.id)
    assert report["rows_checked"] == 1
    assert "changed" in report["reason"]
