"""Teams over HTTP: creating, listing, renaming and deleting a team, and what cannot be set."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from extensions import db
from models import Job, Team, TeamInvite, User
from tests.blueprints.teams.helpers import TEAMS, audit_rows, invite, ok, role_of
from tests.factories import auth_headers, make_team, make_user
from tests.support import Worker, problem_body, wait_job

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
    assert done.result == {"team_id": str(team_id), "members_removed": 2, "invites_removed": 1,
                           "rollups_removed": 0}  # fmt: skip
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
