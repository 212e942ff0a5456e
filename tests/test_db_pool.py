"""The connection pool pings a connection only after it sat idle, and replaces dead ones;
`Database.read_one` (the lean read path) borrows from the same pool and keeps it so.

These kill PostgreSQL backends under the pool, so they talk to PostgreSQL itself: behind
PgBouncer (`make test-pgbouncer`) a killed server connection never reaches the app's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import psycopg
import pytest
from flask import Flask
from psycopg.rows import scalar_row
from sqlalchemy import Float, bindparam, create_engine, event, func, select, text
from sqlalchemy.exc import DBAPIError

from config import Settings
from extensions import Database, EngineOptions, Read
from scripts.devservices import free_port

_PID = Read.of(select(func.pg_backend_pid()), scalar_row)
_SQRT = Read.of(select(func.sqrt(bindparam("x", type_=Float))), scalar_row)


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    database = Database()
    yield database
    database.engine.dispose()


def _direct(settings: Settings) -> str:
    """PostgreSQL itself (DATABASE_DIRECT_URL behind PgBouncer)."""
    return settings.migrations_database_url


def _backend_pid(database: Database) -> int:
    with database.engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(settings: Settings, *pids: int) -> None:
    """What a restart, a failover or an idle timeout does to pooled connections."""
    admin = create_engine(_direct(settings))
    try:
        with admin.connect() as conn:
            for pid in pids:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        admin.dispose()


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
    database.configure(_direct(settings), EngineOptions(pool_size=1, ping_after_idle_seconds=60))
    pings = _count_pings(database, monkeypatch)
    first = _backend_pid(database)
    assert _backend_pid(database) == first  # the same pooled connection, reused
    assert pings == []


@pytest.mark.parametrize("lean", [False, True], ids=["session", "lean read"])
def test_a_connection_that_died_while_idle_is_replaced_on_checkout(
    database: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch, lean: bool
) -> None:
    database.configure(_direct(settings), EngineOptions(pool_size=1, ping_after_idle_seconds=0))
    pings = _count_pings(database, monkeypatch)
    dead = _backend_pid(database)
    _terminate(settings, dead)

    # No error: the ping failed, and the read ran on a new connection.
    assert (database.read_one(_PID, {}) if lean else _backend_pid(database)) != dead
    assert len(pings) == 1


def test_a_lean_read_borrows_a_pooled_connection_and_returns_it_as_it_found_it(
    database: Database, settings: Settings
) -> None:
    database.configure(_direct(settings), EngineOptions(pool_size=1, ping_after_idle_seconds=60))
    pid = _backend_pid(database)
    assert database.read_one(_PID, {}) == pid  # the same pooled connection
    raw = database.engine.raw_connection()
    try:
        # Back out of autocommit: the next session's transaction is a transaction.
        assert cast(psycopg.Connection[Any], raw.dbapi_connection).autocommit is False
    finally:
        raw.close()


def test_a_lean_read_that_finds_nothing_returns_none(
    database: Database, settings: Settings
) -> None:
    database.configure(_direct(settings), EngineOptions(pool_size=1))
    nothing = Read.of(select(func.pg_backend_pid()).where(text("false")), scalar_row)
    assert database.read_one(nothing, {}) is None


def test_a_lean_read_on_a_connection_killed_just_after_use_fails_once_and_drops_the_pool(
    database: Database, settings: Settings
) -> None:
    # Not pinged (used a moment ago): the read fails, as a Connection's would, flagged
    # as a lost connection (the API answers 503) and with every connection pooled
    # before it discarded, so the server's restart costs one failed read, not one each.
    database.configure(_direct(settings), EngineOptions(pool_size=2, ping_after_idle_seconds=60))
    first, second = database.engine.connect(), database.engine.connect()
    pids = [int(c.execute(text("SELECT pg_backend_pid()")).scalar_one()) for c in (first, second)]
    first.close()
    second.close()
    _terminate(settings, *pids)

    with pytest.raises(DBAPIError) as failed:
        database.read_one(_PID, {})
    assert failed.value.connection_invalidated
    assert isinstance(failed.value.orig, psycopg.OperationalError)
    assert database.read_one(_PID, {}) not in pids
    assert _backend_pid(database) not in pids


def test_a_lean_read_that_fails_in_sql_keeps_its_connection(
    database: Database, settings: Settings
) -> None:
    database.configure(_direct(settings), EngineOptions(pool_size=1, ping_after_idle_seconds=60))
    pid = _backend_pid(database)
    with pytest.raises(DBAPIError) as failed:
        database.read_one(_SQRT, {"x": -1.0})
    assert not failed.value.connection_invalidated
    assert database.read_one(_SQRT, {"x": 4.0}) == 2.0
    assert _backend_pid(database) == pid  # still pooled, and out of autocommit again


def test_a_lean_read_without_a_database_fails_as_a_lost_connection(settings: Settings) -> None:
    database = Database()
    database.configure(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    with pytest.raises(DBAPIError) as failed:  # the API's 503, as for any other read
        database.read_one(_PID, {})
    assert isinstance(failed.value.orig, psycopg.OperationalError)
    database.engine.dispose()


def test_a_lean_read_refuses_a_statement_whose_literals_it_would_drop() -> None:
    with pytest.raises(ValueError, match="bindparam"):
        Read.of(select(func.sqrt(4.0)), scalar_row)


def test_a_pool_as_busy_as_its_threads_keeps_its_connections(settings: Settings) -> None:
    # With the settings' pool, 16 threads (half a gunicorn worker's) hitting the database
    # at once open 16 connections and reuse them. A pool that relied on overflow closed
    # each overflow connection as it came back and opened it again for the next request
    # (10 + 10 overflow: six reconnects per round here, 12% of export POSTs in the bench).
    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    database = Database()
    database.init_app(app)
    connects: list[object] = []
    event.listen(database.engine, "connect", lambda conn, _record: connects.append(conn))
    threads, rounds = 16, 10
    together = threading.Barrier(threads)

    def work() -> None:
        for _ in range(rounds):
            together.wait(timeout=30)  # every thread holds a connection at the same time
            with database.engine.connect() as conn:
                conn.execute(text("SELECT pg_sleep(0.01)"))

    try:
        with ThreadPoolExecutor(threads) as pool:
            for done in [pool.submit(work) for _ in range(threads)]:
                done.result()
        assert len(connects) <= threads
    finally:
        database.engine.dispose()
