"""The audit chain's pending path against someone with database access: rows are written
signed but pending and chained by the sealer (services/core/audit_chain.py), so what a
database user can do to a pending row must never end up vouched for by the chain."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient
from psycopg.errors import InsufficientPrivilege, UniqueViolation
from sqlalchemy.exc import DBAPIError, IntegrityError

from extensions import db
from services.core.audit import record_audit
from tests.blueprints.common.audit_chain_helpers import (
    as_database_user,
    chain_rows,
    chain_rows_unsealed,
    team_with_history,
    verify,
)


def test_a_pending_row_inserted_without_the_key_is_never_chained(client: FlaskClient) -> None:
    """Requests write rows pending, signed with `entry_mac`; the sealer vouches for a
    pending row only if that signature verifies, so a database user cannot slip a row
    into the chain by inserting it pending and waiting for the sealer."""
    owner, team_id = team_with_history(client, changes=2)
    last = chain_rows(team_id)[-1]
    as_database_user(
        "INSERT INTO audit_logs (team_id, actor_user_id, action, data, created_at, key_id, "
        "entry_mac) SELECT team_id, actor_user_id, 'team.updated', CAST(:data AS jsonb), "
        "created_at, key_id, :mac FROM audit_logs WHERE id = :id",
        data=json.dumps({"name": {"from": "Acme", "to": "X"}}), mac="0" * 64, id=last["id"],
    )  # fmt: skip

    report = verify(client, owner, team_id)  # the verification seals first
    [forged] = [r for r in chain_rows(team_id) if r["action"] == "team.updated"]
    assert (forged["hash"], forged["chain_seq"]) == (None, None)  # left out of the chain
    assert (report["intact"], report["first_bad_id"]) == (False, forged["id"])
    assert "not written by the app" in report["reason"]
    assert report["rows_checked"] == 3  # the genuine chain around it still verifies


@pytest.mark.parametrize(
    "statement",
    [
        # Sealing a pending row while changing what it says.
        "UPDATE audit_logs SET data = '{}', hash = repeat('a', 64), chain_seq = 9 "
        "WHERE id = :pending",
        # Chaining a sealed row a second time (to move it elsewhere in the chain).
        "UPDATE audit_logs SET hash = repeat('b', 64), chain_seq = 1 WHERE id = :sealed",
        # "Un-sealing" a row, so that the sealer would chain it again.
        "UPDATE audit_logs SET hash = NULL, chain_seq = NULL WHERE id = :sealed",
    ],
)
def test_a_row_is_sealed_once_with_its_content_unchanged(
    client: FlaskClient, statement: str
) -> None:
    owner, team_id = team_with_history(client, changes=1)
    sealed = chain_rows(team_id)[-1]
    record_audit("inventory.adjusted", actor_id=owner.id, team_id=team_id, data={"n": 1})
    db.session.commit()
    [pending] = [r["id"] for r in chain_rows_unsealed(team_id)]

    with pytest.raises(DBAPIError) as refused:
        as_database_user(statement, pending=pending, sealed=sealed["id"])
    assert isinstance(refused.value.orig, InsufficientPrivilege)

    report = verify(client, owner, team_id)
    assert (report["intact"], report["complete"], report["rows_checked"]) == (True, True, 3)


def test_a_copy_of_a_genuine_pending_row_is_refused(client: FlaskClient) -> None:
    """Its entry_mac is genuine, so the sealer would chain a copy: the unique index on it
    refuses the copy outright (a second "role granted" row for one change, say)."""
    owner, team_id = team_with_history(client, changes=1)
    record_audit("inventory.adjusted", actor_id=owner.id, team_id=team_id, data={"n": 1})
    db.session.commit()
    pending = chain_rows_unsealed(team_id)[-1]
    with pytest.raises(IntegrityError) as refused:
        as_database_user(
            "INSERT INTO audit_logs (team_id, actor_user_id, action, data, created_at, key_id, "
            "entry_mac) SELECT team_id, actor_user_id, action, data, created_at, key_id, "
            "entry_mac FROM audit_logs WHERE id = :id",
            id=pending["id"],
        )  # fmt: skip
    assert isinstance(refused.value.orig, UniqueViolation)
    report = verify(client, owner, team_id)
    assert (report["intact"], report["complete"], report["rows_checked"]) == (True, True, 3)
