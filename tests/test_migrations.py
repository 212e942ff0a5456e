"""The schema: one baseline migration builds every table, and it agrees with the models."""

from __future__ import annotations

import hashlib
import json
import uuid

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, make_url, text

from cli import alembic_config
from config import Settings, load_settings
from models import Base
from services.core.audit_seal import head_seal, row_mac
from tests.support import own_engine

DESIGN_TABLES = {
    "users", "user_sessions", "api_keys", "user_profiles", "settings", "payments",
    "subscriptions", "inventory", "teams", "team_members", "team_invites", "notifications",
    "notification_preferences", "audit_logs", "analytics_events", "user_files", "search_index",
    "jobs", "idempotency_keys",
}  # fmt: skip


def test_every_designed_table_exists_after_migrating(migrated_database: str) -> None:
    engine = own_engine(migrated_database)
    tables = set(inspect(engine).get_table_names()) - {"alembic_version"}
    engine.dispose()
    assert len(DESIGN_TABLES) == 19
    assert DESIGN_TABLES <= tables


def test_models_and_migrations_agree(migrated_database: str) -> None:
    """Autogenerate against the migrated database finds nothing to change."""
    engine = own_engine(migrated_database)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_every_table_has_timestamps(migrated_database: str) -> None:
    engine = own_engine(migrated_database)
    inspector = inspect(engine)
    missing = [
        table
        for table in DESIGN_TABLES
        if not {"created_at", "updated_at"} <= {c["name"] for c in inspector.get_columns(table)}
    ]
    engine.dispose()
    assert missing == []


def test_constraints_reject_impossible_rows(migrated_database: str) -> None:
    """Check constraints guard statuses and amounts even against code that forgets."""
    engine = own_engine(migrated_database)
    bad_statements = [
        "INSERT INTO jobs (id, type, queue, status) VALUES (gen_random_uuid(), 't', 'q', 'bogus')",
        "INSERT INTO jobs (id, type, queue, progress) VALUES (gen_random_uuid(), 't', 'q', 101)",
    ]
    for statement in bad_statements:
        with engine.connect() as conn:
            try:
                conn.execute(text(statement))
            except Exception as exc:  # the database refused it, as it must
                assert "check constraint" in str(exc)
            else:
                raise AssertionError(f"accepted: {statement}")
            finally:
                conn.rollback()
    engine.dispose()


def test_audit_rows_from_before_the_keyed_chain_are_re_signed(
    migrated_database: str, settings: Settings
) -> None:
    """Rows chained with the old bare SHA-256 are signed with the current audit key, each
    chain gets its sealed head, and from then on the rows cannot be changed."""
    # Creating, migrating and dropping a database: on PostgreSQL itself, as a deploy's
    # migrations run (behind PgBouncer its idle server connections would block the DROP).
    base = make_url(settings.migrations_database_url)
    scratch = base.set(database=f"{base.database}_mig")
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch.database}"'))
        conn.execute(text(f'CREATE DATABASE "{scratch.database}"'))
    url = scratch.render_as_string(hide_password=False)
    engine = create_engine(url)
    try:
        command.upgrade(alembic_config(url), "f17dee425bd3")  # the last unkeyed revision
        team = uuid.uuid4()
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO teams (id, name) VALUES (:id, 'Old')"), {"id": team})
            prev: dict[object, str | None] = {}
            for i, team_id in enumerate([team, None, team, team, None]):
                digest = hashlib.sha256(f"legacy {i}".encode()).hexdigest()
                conn.execute(
                    text("INSERT INTO audit_logs (team_id, action, data, ip, created_at, "
                         "prev_hash, hash) VALUES (:team, 'old.action', CAST(:data AS jsonb), "
                         "'::ffff:10.0.0.1', now(), :prev, :hash)"),
                    {"team": team_id, "data": json.dumps({"i": i}), "prev": prev.get(team_id),
                     "hash": digest},
                )  # fmt: skip
                prev[team_id] = digest

        command.upgrade(alembic_config(url), "head")

        key_id, key = next(iter(load_settings().audit_key_ring.items()))
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM audit_logs ORDER BY id")).all()
            heads = {h.chain: h for h in conn.execute(text("SELECT * FROM audit_heads"))}
        last: dict[str, str | None] = {}
        for row in rows:
            chain = str(row.team_id) if row.team_id else "global"
            assert (row.key_id, row.prev_hash) == (key_id, last.get(chain))
            assert row.hash == row_mac(row, key)
            last[chain] = row.hash
        assert {c: (h.row_count, h.last_hash) for c, h in heads.items()} == {
            str(team): (3, last[str(team)]),
            "global": (2, last["global"]),
        }
        for chain, h in heads.items():
            assert h.seal == head_seal(chain, h.last_id, h.last_hash, h.row_count, key_id, key)
        with engine.connect() as conn:
            try:
                conn.execute(text("DELETE FROM audit_logs"))
            except Exception as exc:  # the trigger refused it, as it must
                assert "append-only" in str(exc)
            else:
                raise AssertionError("an audit row was deleted")
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch.database}"'))
        admin.dispose()
