"""The audit chain against someone with database access (issue 14, Medium 6; Low "verify").

The tampering goes straight to PostgreSQL, on its own connection, as a database user
would; what the team sees is asked over HTTP (`GET .../audit-logs/verify`) or, for chains
whose team is gone, from `flask audit verify`. The attacker knows the code, not the key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient
from psycopg.errors import InsufficientPrivilege
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

import config
from config import Settings
from extensions import db
from models import AuditLog
from services.core.audit import record_audit
from services.core.audit_chain import seal_chain
from tests.blueprints.common.audit_chain_helpers import (
    NEW_KEY,
    TEAMS,
    as_database_user,
    chain_rows,
    ok,
    plain_sha256,
    team_with_history,
    verify,
)
from tests.factories import PASSWORD, auth_headers, make_user
from tests.support import (
    PRODUCTION_REQUIRED,
    PrivateStacks,
    Worker,
    make_settings,
    problem_body,
    wait_job,
)


def test_rewriting_a_row_and_recomputing_the_chain_with_sha256_is_reported(
    client: FlaskClient,
) -> None:
    owner, team_id = team_with_history(client)
    assert verify(client, owner, team_id)["intact"] is True
    rows = chain_rows(team_id)
    target = rows[2]  # a role change in the middle: "to admin" becomes "to viewer"

    # The attacker changes the row and recomputes its hash and every later one, so that
    # every link fits again.
    forged: list[tuple[int, str, str | None]] = []
    prev = rows[1]["hash"]
    for row in rows[2:]:
        if row["id"] == target["id"]:
            row["data"] = {"role": {"from": "member", "to": "viewer"}}
        digest = plain_sha256(row, prev)
        forged.append((row["id"], digest, prev))
        prev = digest
    statements = ["ALTER TABLE audit_logs DISABLE TRIGGER USER"]
    for row_id, digest, link in forged:
        data = ", data = CAST(:data AS jsonb)" if row_id == target["id"] else ""
        statements.append(
            f"UPDATE audit_logs SET hash = '{digest}', prev_hash = '{link}'{data} "
            f"WHERE id = {row_id}"
        )
    statements.append("ALTER TABLE audit_logs ENABLE TRIGGER USER")
    as_database_user(*statements, data=json.dumps({"role": {"from": "member", "to": "viewer"}}))

    report = verify(client, owner, team_id)
    assert report["intact"] is False and report["complete"] is False
    assert report["first_bad_id"] == target["id"]
    assert "changed" in report["reason"]
    assert report["rows_checked"] == 2  # the rows before it still verify


def test_deleting_the_newest_rows_is_reported(client: FlaskClient) -> None:
    owner, team_id = team_with_history(client, changes=5)
    rows = chain_rows(team_id)
    keep = rows[2]["id"]

    as_database_user(
        "ALTER TABLE audit_logs DISABLE TRIGGER USER",
        "DELETE FROM audit_logs WHERE team_id = :team AND id > :keep",
        "ALTER TABLE audit_logs ENABLE TRIGGER USER",
        team=team_id, keep=keep,
    )  # fmt: skip

    report = verify(client, owner, team_id)
    assert report["intact"] is False and report["complete"] is False
    assert report["rows_checked"] == 3  # what is left is genuine...
    assert "newest rows are missing" in report["reason"]  # ...but it is not all there
    assert f"row {keep}" in report["reason"]


def test_setting_the_head_back_without_the_key_is_reported(client: FlaskClient) -> None:
    owner, team_id = team_with_history(client, changes=5)
    rows = chain_rows(team_id)
    keep = rows[2]

    # The thorough attacker deletes the tail and rewinds the head to match it; the seal
    # cannot be recomputed without the key, so they keep the old one (or hash it plainly).
    as_database_user(
        "ALTER TABLE audit_logs DISABLE TRIGGER USER",
        "ALTER TABLE audit_heads DISABLE TRIGGER USER",
        "DELETE FROM audit_logs WHERE team_id = :team AND id > :keep",
        "UPDATE audit_heads SET last_id = :keep, last_hash = :hash, row_count = 3 "
        "WHERE chain = :chain",
        "ALTER TABLE audit_heads ENABLE TRIGGER USER",
        "ALTER TABLE audit_logs ENABLE TRIGGER USER",
        team=team_id, keep=keep["id"], hash=keep["hash"], chain=str(team_id),
    )  # fmt: skip
    report = verify(client, owner, team_id)
    assert (report["intact"], report["rows_checked"]) == (False, 0)
    assert report["reason"] == "the chain's sealed head was changed"

    # Without any head at all the rows are not vouched for either.
    as_database_user(
        "ALTER TABLE audit_heads DISABLE TRIGGER USER",
        "DELETE FROM audit_heads WHERE chain = :chain",
        "ALTER TABLE audit_heads ENABLE TRIGGER USER",
        chain=str(team_id),
    )  # fmt: skip
    report = verify(client, owner, team_id)
    assert (report["intact"], report["first_bad_id"]) == (False, rows[0]["id"])
    assert "no sealed head" in report["reason"]


def test_a_row_inserted_behind_the_apps_back_is_reported(client: FlaskClient) -> None:
    owner, team_id = team_with_history(client, changes=2)
    last = chain_rows(team_id)[-1]
    forged = {**last, "action": "team.updated", "data": {"name": {"from": "Acme", "to": "X"}}}
    digest = plain_sha256(forged, last["hash"])
    as_database_user(
        "INSERT INTO audit_logs (team_id, actor_user_id, action, data, created_at, key_id, "
        "prev_hash, hash) SELECT team_id, actor_user_id, 'team.updated', "
        "CAST(:data AS jsonb), created_at, key_id, hash, :digest FROM audit_logs WHERE id = :id",
        data=json.dumps(forged["data"]), digest=digest, id=last["id"],
    )  # fmt: skip
    [extra] = [r for r in chain_rows(team_id) if r["hash"] == digest]

    report = verify(client, owner, team_id)
    assert (report["intact"], report["first_bad_id"]) == (False, extra["id"])
    assert "past the chain's sealed head" in report["reason"]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_logs SET data = '{}' WHERE team_id = :team",
        "DELETE FROM audit_logs WHERE team_id = :team",
        "DELETE FROM audit_heads WHERE chain = :chain",
        "UPDATE audit_heads SET row_count = row_count - 1 WHERE chain = :chain",
    ],
)
def test_the_app_role_cannot_change_or_delete_audit_rows_or_rewind_the_head(
    client: FlaskClient, statement: str
) -> None:
    owner, team_id = team_with_history(client, changes=2)
    before = chain_rows(team_id)

    with pytest.raises(DBAPIError) as refused:
        as_database_user(statement, team=team_id, chain=str(team_id))
    assert isinstance(refused.value.orig, InsufficientPrivilege)
    assert "audit_logs is append-only" in str(refused.value) or "audit_heads" in str(refused.value)

    assert chain_rows(team_id) == before
    report = verify(client, owner, team_id)
    assert (report["intact"], report["complete"], report["rows_checked"]) == (True, True, 3)


def test_after_rotating_the_key_old_rows_verify_and_new_rows_use_the_new_key(
    client: FlaskClient, settings: Settings, private_stack: PrivateStacks
) -> None:
    owner, team_id = team_with_history(client, changes=2)
    old_key_id = config.DEV_AUDIT_KEYS.split(":")[0]

    # Rotation: the new key first (it signs), the old one kept (it verifies).
    keys = f"{NEW_KEY},{config.DEV_AUDIT_KEYS}"
    rotated = private_stack(keep="all", audit_keys=keys).app
    member = chain_rows(team_id)[-1]["subject_id"]  # the member whose role changed
    after = rotated.test_client()
    ok(after.patch(f"{TEAMS}/{team_id}/members/{member}", json={"role": "viewer"},
                   headers=auth_headers(owner)))  # fmt: skip
    # Only a sealer that knows the new key chains its rows (deploy the ring everywhere).
    with rotated.app_context():
        seal_chain(team_id)

    assert [r["key_id"] for r in chain_rows(team_id)] == [old_key_id] * 3 + ["k2"]
    with db.engine.connect() as conn:
        head_key = conn.scalar(text("SELECT key_id FROM audit_heads WHERE chain = :c"),
                               {"c": str(team_id)})  # fmt: skip
    assert head_key == "k2"
    report = verify(after, owner, team_id)
    assert (report["intact"], report["complete"], report["rows_checked"]) == (True, True, 4)

    # Dropping the old key too early: its rows can no longer be vouched for.
    forgetful = private_stack(keep="all", audit_keys=NEW_KEY).app
    report = verify(forgetful.test_client(), owner, team_id)
    assert report["intact"] is False and f"key '{old_key_id}'" in report["reason"]


@pytest.fixture
def bounded(settings: Settings, private_stack: PrivateStacks) -> Iterator[FlaskClient]:
    """An app whose verify checks at most 40 rows per request."""
    yield private_stack(keep="all", audit_verify_max_rows=40).client()


def test_verify_checks_a_bounded_page_and_hands_back_a_cursor(
    client: FlaskClient, bounded: FlaskClient
) -> None:
    owner, team_id = team_with_history(client, changes=1)
    for i in range(98):
        record_audit("inventory.adjusted", actor_id=owner.id, team_id=team_id, data={"i": i})
    db.session.commit()  # 100 rows in the team's chain

    pages, cursor = [], None
    while True:
        report = verify(bounded, owner, team_id, **({"cursor": cursor} if cursor else {}))
        assert report["intact"] is True
        assert report["rows_checked"] <= 40
        pages.append(report["rows_checked"])
        cursor = report["next_cursor"]
        if cursor is None:
            break
        assert report["complete"] is False
    assert pages == [40, 40, 20] and report["complete"] is True

    # A cursor is the server's word on what was checked: a made-up or altered one, or
    # another team's, is refused instead of skipping rows.
    first = verify(bounded, owner, team_id)["next_cursor"]
    token = first.partition(".")[0]
    other_owner, other_team = team_with_history(client, changes=1)
    for bad in (f"{token}.{'0' * 64}", "garbage", first[:-1] + ("0" if first[-1] != "0" else "1")):
        url = f"{TEAMS}/{team_id}/audit-logs/verify"
        problem_body(bounded.get(url, query_string={"cursor": bad}, headers=auth_headers(owner)),
                     422)  # fmt: skip
    elsewhere = f"{TEAMS}/{other_team}/audit-logs/verify"
    problem_body(bounded.get(elsewhere, query_string={"cursor": first},
                             headers=auth_headers(other_owner)), 422)  # fmt: skip


def test_paged_verify_finds_tampering_past_the_first_page(
    client: FlaskClient, bounded: FlaskClient
) -> None:
    owner, team_id = team_with_history(client, changes=1)
    for i in range(58):
        record_audit("inventory.adjusted", actor_id=owner.id, team_id=team_id, data={"i": i})
    db.session.commit()  # 60 rows
    target = chain_rows(team_id)[50]
    as_database_user(
        "ALTER TABLE audit_logs DISABLE TRIGGER USER",
        "UPDATE audit_logs SET data = '{\"i\": 999}' WHERE id = :id",
        "ALTER TABLE audit_logs ENABLE TRIGGER USER",
        id=target["id"],
    )  # fmt: skip

    first = verify(bounded, owner, team_id)
    assert (first["intact"], first["rows_checked"]) == (True, 40)
    second = verify(bounded, owner, team_id, cursor=first["next_cursor"])
    assert (second["intact"], second["first_bad_id"]) == (False, target["id"])
    assert second["next_cursor"] is None and second["complete"] is False


@pytest.mark.worker
def test_account_and_team_deletion_keep_every_chain_intact(
    app: APIFlask, client: FlaskClient, worker: Worker
) -> None:
    owner, team_id = team_with_history(client, changes=2)
    leaving = make_user()
    login = client.post("/api/v1/auth/login", json={"email": leaving.email, "password": PASSWORD})
    token = ok(login)["access_token"]

    gone = ok(client.delete("/api/v1/me", headers={"Authorization": f"Bearer {token}"}), 202)
    dropped = ok(client.delete(f"{TEAMS}/{team_id}", headers=auth_headers(owner)), 202)
    wait_job(gone["job"]["id"], "succeeded", describe=worker.describe)
    wait_job(dropped["job"]["id"], "succeeded", describe=worker.describe)

    db.session.expire_all()
    actions = set(db.session.scalars(select(AuditLog.action)))
    assert {"user.anonymised", "team.deleted"} <= actions
    result = app.test_cli_runner().invoke(args=["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert f"team {team_id}: intact, 5 rows" in result.output
    assert "global chain: intact" in result.output
    assert " 0 broken" in result.output


def test_offline_verify_exits_non_zero_on_a_broken_chain(
    app: APIFlask, client: FlaskClient
) -> None:
    _owner, team_id = team_with_history(client, changes=3)
    newest = chain_rows(team_id)[-1]  # chained by the sealer by now
    as_database_user(
        "ALTER TABLE audit_logs DISABLE TRIGGER USER",
        "DELETE FROM audit_logs WHERE id = :newest",
        "ALTER TABLE audit_logs ENABLE TRIGGER USER",
        newest=newest["id"],
    )  # fmt: skip
    result = app.test_cli_runner().invoke(args=["audit", "verify", "--team", str(team_id)])
    assert result.exit_code == 1
    assert f"team {team_id}: BROKEN after 3 good rows: the newest rows are missing" in result.output


def test_rotate_key_prints_a_key_the_settings_accept(
    app: APIFlask, settings: Settings, private_stack: PrivateStacks
) -> None:
    result = app.test_cli_runner().invoke(args=["audit", "rotate-key", "--id", "k2"])
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    [entry] = [line for line in lines if line.startswith("k2:")]
    assert f"AUDIT_KEYS={entry},dev:..." in result.output
    assert config.DEV_AUDIT_KEYS.split(":")[1] not in result.output  # old secrets are never printed
    production = make_settings(**{**settings.model_dump(), **PRODUCTION_REQUIRED,
                                  "app_env": "production", "ratelimit_memory_fallback": False,
                                  "audit_keys": entry})  # fmt: skip
    assert list(production.audit_key_ring) == ["k2"]
    again = app.test_cli_runner().invoke(args=["audit", "rotate-key", "--id", "dev"])
    assert again.exit_code != 0 and "already has a key 'dev'" in again.output
