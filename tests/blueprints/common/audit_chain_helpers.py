"""What the audit-chain security tests share: tampering as a database user would, the
chain as stored, and the team's verification over HTTP."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import text
from werkzeug.test import TestResponse

from extensions import db
from models import User
from services.core.audit_chain import seal_chain
from tests.factories import auth_headers, make_team, make_user

TEAMS = "/api/v1/teams"
NEW_KEY = "k2:a-second-audit-key-of-at-least-32-characters"


def ok(response: TestResponse, status: int = 200) -> Any:
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


def as_database_user(*statements: str, **params: Any) -> None:
    """Run SQL on a connection of its own, in one transaction, as a database user would."""
    db.session.commit()  # the test's own reads must not hold locks the statements need
    with db.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement), params)
    db.session.expire_all()


def chain_rows(team_id: uuid.UUID) -> list[dict[str, Any]]:
    """The team's chain in its order, once the sealer has chained what requests wrote."""
    db.session.commit()
    seal_chain(team_id)
    with db.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT * FROM audit_logs WHERE team_id = :team ORDER BY chain_seq NULLS LAST, id"
            ),
            {"team": team_id},
        )
        return [dict(r._mapping) for r in rows]


def plain_sha256(row: dict[str, Any], prev_hash: str | None) -> str:
    """What the attacker can compute without the key: a bare SHA-256 over the row's
    content and its predecessor's hash (the chain's original design)."""
    content = {
        "team_id": str(row["team_id"]) if row["team_id"] else None,
        "actor_user_id": str(row["actor_user_id"]) if row["actor_user_id"] else None,
        "action": row["action"], "subject_type": row["subject_type"],
        "subject_id": row["subject_id"], "data": row["data"],
        "ip": str(row["ip"]) if row["ip"] else None, "user_agent": row["user_agent"],
        "request_id": row["request_id"],
        "created_at": row["created_at"].astimezone(UTC).isoformat(), "prev_hash": prev_hash,
    }  # fmt: skip
    encoded = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


def team_with_history(client: FlaskClient, changes: int = 4) -> tuple[User, uuid.UUID]:
    """A team whose chain holds team.created and `changes` role changes, made over HTTP."""
    owner, member = make_user(), make_user()
    team_id = make_team(owner, members=[(member, "member")])
    url = f"{TEAMS}/{team_id}/members/{member.id}"
    for i in range(changes):
        role = "admin" if i % 2 == 0 else "member"
        ok(client.patch(url, json={"role": role}, headers=auth_headers(owner)))
    return owner, team_id


def verify(client: FlaskClient, owner: User, team_id: uuid.UUID, **query: str) -> Any:
    url = f"{TEAMS}/{team_id}/audit-logs/verify"
    return ok(client.get(url, query_string=query, headers=auth_headers(owner)))


def chain_rows_unsealed(team_id: uuid.UUID) -> list[dict[str, Any]]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM audit_logs WHERE team_id = :team AND hash IS NULL ORDER BY id"),
            {"team": team_id},
        )
        return [dict(r._mapping) for r in rows]
