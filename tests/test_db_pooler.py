"""Behind a transaction-mode pooler (DB_POOLER=transaction) the app sends no startup
options and prepares nothing on the server; its timeouts are the role's settings (`flask
db timeouts`), checked on a process's first connection; the pool is sized as configured.

A PgBouncer of each test's own (transaction mode, two server connections) fronts
PostgreSQL itself, in `make test` and `make test-pgbouncer` alike.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from psycopg import sql
from psycopg.rows import scalar_row
from sqlalchemy import Float, bindparam, event, func, make_url, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from config import Settings
from extensions import Database, EngineOptions, Read
from pg_timeouts import Timeouts
from scripts.devservices import PgBouncerServer, free_port
from tests.support import PrivateStacks

_SQRT = Read.of(select(func.sqrt(bindparam("x", type_=Float))), scalar_row)
# Distinct from every default, so a value seen can only have come from these settings.
TIMEOUTS = Timeouts(statement_ms=12_345, lock_ms=2_345, idle_in_transaction_ms=34_567)
SHOWN = {
    "statement_timeout": "12345ms",
    "lock_timeout": "2345ms",
    "idle_in_transaction_session_timeout": "34567ms",
}


@pytest.fixture
def bouncer(settings: Settings, tmp_path: Path) -> Iterator[PgBouncerServer]:
    """A PgBouncer of the test's own: no server connection left over from another test."""
    workdir = tmp_path / "pgbouncer"
    server = PgBouncerServer(free_port(), workdir, settings.migrations_database_url, pool_size=2)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def database() -> Iterator[Database]:
    database = Database()
    yield database
    database.engine.dispose()


def _name(settings: Settings) -> str:
    return str(make_url(settings.migrations_database_url).database)


def _direct_dsn(settings: Settings, database: str) -> str:
    url = make_url(settings.migrations_database_url).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


def test_behind_a_transaction_pooler_no_startup_options_are_sent(
    bouncer: PgBouncerServer, settings: Settings, database: Database
) -> None:
    url = bouncer.url(_name(settings))
    # Without a pooler the timeouts travel as startup options, which PgBouncer refuses.
    refused = Database()
    refused.configure(url, EngineOptions(pooler="none"))
    with pytest.raises(DBAPIError, match="unsupported startup parameter: options"):
        refused.read_one(_SQRT, {"x": 9.0})
    refused.engine.dispose()

    database.configure(url, EngineOptions(pooler="transaction"))
    assert database.read_one(_SQRT, {"x": 9.0}) == 3.0
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "DB_POOLER=transaction"])
def test_behind_a_transaction_pooler_nothing_is_prepared_on_the_server(
    bouncer: PgBouncerServer, settings: Settings, database: Database, prepared: bool
) -> None:
    options = EngineOptions(pool_size=1, pooler="transaction", prepared_statements=prepared)
    database.configure(bouncer.url(_name(settings)), options)
    for _ in range(10):  # psycopg prepares a statement on its 6th execution
        assert database.read_one(_SQRT, {"x": 4.0}) == 2.0
    # Another client takes the server connection those ran on and holds it in a
    # transaction: the app's next statement lands on the other one.
    with psycopg.connect(bouncer.dsn(_name(settings)), prepare_threshold=None) as other:
        statements = other.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
        if prepared:
            assert statements == (1,)
            with pytest.raises(DBAPIError, match=r"prepared statement .* does not exist"):
                database.read_one(_SQRT, {"x": 4.0})
        else:
            assert statements == (0,)
            for _ in range(10):
                assert database.read_one(_SQRT, {"x": 4.0}) == 2.0


@pytest.fixture
def scratch_database(settings: Settings) -> str:
    """A new, empty database (the role has no settings in it yet); its name."""
    name = f"{_name(settings)}_timeouts"
    with psycopg.connect(_direct_dsn(settings, "postgres"), autocommit=True) as admin:
        # FORCE: a PgBouncer of an earlier run may still hold server connections to it.
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def _shown(dsn: str) -> dict[str, str]:
    """The timeouts a new connection to `dsn` without options runs under."""
    with psycopg.connect(dsn) as conn:
        return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in SHOWN}  # type: ignore[index]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """What the timeout check logged."""
    return [
        r.msg for r in caplog.records
        if isinstance(r.msg, dict) and str(r.msg.get("event")).startswith("database_timeouts")
    ]  # fmt: skip


def _first_connection(url: str, pooler: str) -> None:
    database = Database()
    database.configure(url, EngineOptions(pooler=pooler, timeouts=TIMEOUTS))  # type: ignore[arg-type]
    with database.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    database.engine.dispose()


def test_flask_db_timeouts_makes_them_the_roles_and_the_first_connection_checks(
    bouncer: PgBouncerServer,
    settings: Settings,
    scratch_database: str,
    private_stack: PrivateStacks,
    caplog: pytest.LogCaptureFixture,
) -> None:
    direct = _direct_dsn(settings, scratch_database)
    direct_url = make_url(settings.migrations_database_url).set(database=scratch_database)
    url = direct_url.render_as_string(hide_password=False)
    assert _shown(direct)["statement_timeout"] == "0"  # nothing set for the role yet

    # Without a pooler the settings arrive as startup options: nothing to check.
    _first_connection(url, "none")
    assert _warnings(caplog) == []
    # Behind one, a connection runs under whatever the role has, and the process says so.
    _first_connection(url, "transaction")
    (warning,) = _warnings(caplog)
    assert warning["event"] == "database_timeouts_differ"
    assert warning["timeouts"]["statement_timeout"] == {"expected": 12_345, "seen": 0}
    assert "flask db timeouts" in warning["hint"]
    caplog.clear()

    # Through the pooler, as an operator runs it: the role it logs in as gets them.
    stack = private_stack(
        keep=("redis_url", "redis_sentinel_master"),
        database_url=bouncer.url(scratch_database),
        db_pooler="transaction",
        db_statement_timeout_ms=TIMEOUTS.statement_ms,
        db_lock_timeout_ms=TIMEOUTS.lock_ms,
        db_idle_in_transaction_timeout_ms=TIMEOUTS.idle_in_transaction_ms,
    )
    with stack.app.app_context():  # the command's app, not the session's
        result = stack.app.test_cli_runner().invoke(args=["db", "timeouts"])
    assert result.exit_code == 0, result.output
    assert f"in database {scratch_database}" in result.output
    assert "statement_timeout=12345" in result.output

    assert _shown(direct) == SHOWN  # every new connection, without any options
    _first_connection(url, "transaction")
    assert _warnings(caplog) == []


def test_the_pool_is_sized_timed_and_recycled_as_configured(settings: Settings) -> None:
    app = Flask(__name__)
    app.config["SETTINGS"] = settings.model_copy(
        update={"db_pool_size": 2, "db_max_overflow": 1, "db_pool_timeout_seconds": 0.1,
                "db_pool_recycle_seconds": 1}
    )  # fmt: skip
    database = Database()
    database.init_app(app)
    engine = database.engine
    connects: list[object] = []
    event.listen(engine, "connect", lambda conn, _record: connects.append(conn))
    try:
        held = [engine.connect() for _ in range(3)]  # the pool's two and one overflow
        with pytest.raises(PoolTimeout):
            engine.connect()
        for conn in held:
            conn.close()
        assert len(connects) == 3

        with engine.connect() as conn:  # a pooled one: no new connection
            conn.execute(text("SELECT 1"))
        assert len(connects) == 3
        time.sleep(1.1)  # older than DB_POOL_RECYCLE_SECONDS now
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert len(connects) == 4  # replaced on checkout
    finally:
        engine.dispose()
