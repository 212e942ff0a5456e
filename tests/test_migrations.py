"""The schema: one baseline migration builds every table, and it agrees with the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from models import Base

DESIGN_TABLES = {
    "users", "user_sessions", "api_keys", "user_profiles", "settings", "payments",
    "subscriptions", "inventory", "teams", "team_members", "team_invites", "notifications",
    "notification_preferences", "audit_logs", "analytics_events", "user_files", "search_index",
    "jobs", "idempotency_keys",
}  # fmt: skip


def test_every_designed_table_exists_after_migrating(migrated_database: str) -> None:
    engine = create_engine(migrated_database)
    tables = set(inspect(engine).get_table_names()) - {"alembic_version"}
    engine.dispose()
    assert len(DESIGN_TABLES) == 19
    assert DESIGN_TABLES <= tables


def test_models_and_migrations_agree(migrated_database: str) -> None:
    """Autogenerate against the migrated database finds nothing to change."""
    engine = create_engine(migrated_database)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_every_table_has_timestamps(migrated_database: str) -> None:
    engine = create_engine(migrated_database)
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
    engine = create_engine(migrated_database)
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
