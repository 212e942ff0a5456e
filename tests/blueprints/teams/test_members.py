"""Team members and roles over HTTP: listing, changing roles, leaving, removing, and
handing over ownership.
"""

from __future__ import annotations

from flask.testing import FlaskClient

from tests.blueprints.teams.helpers import TEAMS, audit_rows, ok, role_of
from tests.factories import auth_headers, make_team, make_user
from tests.support import problem_body

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
