"""Helpers of the team tests: answers, roles, invitations and their links, audit rows."""

from __future__ import annotations

import uuid
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from extensions import db
from models import AuditLog, User
from tests.factories import auth_headers

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
