"""The connection pool pings a connection only after it sat idle, and replaces dead ones."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from config import Settings
from extensions import Database


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    database = Database()
    yield database
    database.engine.dispose()


def _backend_pid(database: Database) -> int:
    with database.engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _count_pings(database: Database, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    pings: list[Any] = []
    dialect = database.engine.dialect
    real_ping = dialect.do_ping

    def ping(dbapi_connection: Any) -> bool:
        pings.append(dbapi_connection)
        return real_ping(dbapi_connection)

    monkeypatch.setattr(dialect, "do_ping", ping)
    return pings


def test_a_connection_just_used_is_handed_out_without_a_ping(
    database: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    database.configure(settings.database_url, pool_size=1, ping_after_idle_seconds=60)
    pings = _count_pings(database, monkeypatch)
    first = _backend_pid(database)
    assert _backend_pid(database) == first  # the same pooled connection, reused
    assert pings == []


def test_a_connection_that_died_while_idle_is_replaced_on_checkout(
    database: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    database.configure(settings.database_url, pool_size=1, ping_after_idle_seconds=0)
    pings = _count_pings(database, monkeypatch)
    dead = _backend_pid(database)
    admin = create_engine(settings.database_url)
    try:
        with admin.connect() as conn:  # a restart, a failover or an idle timeout
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dead})
    finally:
        admin.dispose()

    assert _backend_pid(database) != dead  # no error: the ping failed, a new connection
    assert len(pings) == 1
