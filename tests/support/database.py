"""The test database: emptying every table between tests, and connections of a test's
own beside the app's pool.

Those prepare nothing on the server, as the app does behind a transaction pooler: under
`make test-pgbouncer` they go through PgBouncer too, where a statement prepared on one
server connection is missing on the next (`prepared statement "_pg3_0" does not exist`).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg.errors import DeadlockDetected, LockNotAvailable
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from extensions import db
from models import Base


def truncate_all_tables(give_up_after: float = 30.0) -> None:
    """TRUNCATE every table, backing off while a worker's transaction holds one of them.

    The session's worker may still be running a job the test queued on the side (an
    invitation email, say). TRUNCATE locks table after table, so it could deadlock with
    that transaction (and wait PostgreSQL's deadlock_timeout to find out); with a short
    lock timeout it steps aside instead, lets the job finish, and tries again.
    """
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    deadline = time.monotonic() + give_up_after
    while True:
        try:
            with db.engine.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '100ms'"))
                conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            return
        except OperationalError as exc:
            busy = isinstance(exc.orig, (LockNotAvailable, DeadlockDetected))
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def other_connection(autocommit: bool = True) -> psycopg.Connection[Any]:
    """A connection to the app's database outside its pool: what any other process sees."""
    url = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(url, autocommit=autocommit, prepare_threshold=None)


def own_engine(url: str, **kwargs: Any) -> Engine:
    """An engine of a test's own on `url` (its own connections, outside the app's pool)."""
    return create_engine(url, connect_args={"prepare_threshold": None}, **kwargs)
