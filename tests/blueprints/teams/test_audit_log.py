"""A team's audit log over HTTP: filters, pages, and verification of the chain."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy import text

from extensions import db
from tests.blueprints.teams.helpers import TEAMS, audit_rows, ok
from tests.factories import auth_headers, make_team, make_user
from tests.support import problem_body

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
