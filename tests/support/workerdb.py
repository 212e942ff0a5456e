"""A PostgreSQL database and a Redis db per pytest-xdist worker process.

`make test` runs the suite on several worker processes (gw0, gw1, ...); each has a
session worker, truncates every table between tests and counts rate limits, so each
needs a database and a Redis db of its own. Worker gwN uses database `<name>_gwN`
(created if missing) and Redis db `<db> - N` (so the default 15 takes 15 and 14), and
with it the Celery broker and everything else keyed by REDIS_URL. Through PgBouncer
(`make test-pgbouncer`) DATABASE_DIRECT_URL, PostgreSQL itself, moves along: databases
are created there, as a deployer would, not through the pooler.
"""

from __future__ import annotations

import contextlib
import os

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from config import Settings
from pg_timeouts import Timeouts, write_to_role


def worker_index(worker: str | None) -> int | None:
    """N for pytest-xdist's "gwN", None outside xdist."""
    return int(worker.removeprefix("gw")) if worker and worker.startswith("gw") else None


def database_url_for(url: str, worker: str) -> str:
    parsed = make_url(url)
    return parsed.set(database=f"{parsed.database}_{worker}").render_as_string(hide_password=False)


def redis_url_for(url: str, index: int) -> str:
    if ";" in url:  # a Sentinel URL (kombu's form): the same db in each sentinel's entry
        return ";".join(redis_url_for(entry, index) for entry in url.split(";"))
    base, _, db = url.rpartition("/")
    number = (int(db) if db.isdigit() else 0) - index
    if number < 0:
        raise RuntimeError(
            f"REDIS_URL {url}: worker {index} would need db {number}; "
            "choose a higher TEST_REDIS_DB or fewer workers (-n)"
        )
    return f"{base}/{number}"


def create_database(url: str) -> None:
    """CREATE DATABASE for `url`'s database unless it exists (like scripts/devservices.py)."""
    parsed = make_url(url)
    admin = parsed.set(drivername="postgresql", database="postgres")
    dsn = admin.render_as_string(hide_password=False)
    # CREATE DATABASE cannot run inside a transaction block, hence autocommit.
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        name = parsed.database
        assert name, f"no database in {parsed!r}"
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
        with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # created meanwhile
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def give_role_timeouts(settings: Settings) -> None:
    """What `flask db timeouts` does, for the test database (through DATABASE_URL)."""
    url = make_url(settings.database_url).set(drivername="postgresql")
    dsn = url.render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        write_to_role(conn, Timeouts.from_settings(settings))


def use_own_services() -> None:
    """In an xdist worker: point DATABASE_URL (and DATABASE_DIRECT_URL) and REDIS_URL at
    this worker's own."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    index = worker_index(worker)
    if worker is None or index is None:
        return
    for name in ("DATABASE_URL", "DATABASE_DIRECT_URL"):
        if url := os.environ.get(name):
            os.environ[name] = database_url_for(url, worker)
    if url := os.environ.get("DATABASE_DIRECT_URL") or os.environ.get("DATABASE_URL"):
        create_database(url)
    if url := os.environ.get("REDIS_URL"):
        os.environ["REDIS_URL"] = redis_url_for(url, index)
