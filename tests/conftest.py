"""Fixtures: a freshly migrated PostgreSQL database, the app, isolation, a real worker.

`make test` provides DATABASE_URL (database maycole_test) and REDIS_URL (db 15), found
or started by scripts/devservices.py. Each test starts from empty tables.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient
from psycopg.errors import DeadlockDetected, LockNotAvailable
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app import create_app
from cli import rebuild_schema
from config import Settings
from extensions import db, limiter
from models import Base
from scripts.devservices import free_port
from tests.support import ROOT, LocalStripe, Mailbox, MotoS3, Worker, make_settings

# The fault-injection suite runs whole stacks of its own for minutes: `make test-faults`.
collect_ignore = [] if os.environ.get("MAYCOLE_FAULTS") else ["faults"]


@pytest.fixture(scope="session")
def mailbox() -> Iterator[Mailbox]:
    """The SMTP server every test run's app and workers deliver to."""
    box = Mailbox(free_port())
    box.start()
    yield box
    box.stop()


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[LocalStripe]:
    """The fake Stripe API (localstripe) every test run's app and workers pay through."""
    server = LocalStripe(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3]:
    """moto's S3 over real HTTP; tests point STORAGE_BACKEND=s3 at `s3_server.url`."""
    server = MotoS3(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def settings(mailbox: Mailbox, stripe_server: LocalStripe) -> Settings:
    return make_settings(
        smtp_url=mailbox.url,
        stripe_api_base=stripe_server.url,
        stripe_secret_key="sk_test_local",
        stripe_webhook_secret="whsec_test",
    )


@pytest.fixture(scope="session")
def migrated_database(settings: Settings) -> str:
    """Drop everything, then build the schema with the real migrations."""
    rebuild_schema(settings.database_url)
    return settings.database_url


@pytest.fixture(scope="session")
def app(settings: Settings, migrated_database: str) -> APIFlask:
    return create_app(settings)


@pytest.fixture(autouse=True)
def _isolated(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts with empty tables and fresh rate-limit counters."""
    if "app" not in request.fixturenames and "client" not in request.fixturenames:
        yield
        return
    app: APIFlask = request.getfixturevalue("app")
    with app.app_context():
        yield
        db.session.remove()
        _truncate_all_tables()
        limiter.reset()
        if "mailbox" in request.fixturenames:
            request.getfixturevalue("mailbox").messages.clear()


def _truncate_all_tables(give_up_after: float = 30.0) -> None:
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


@pytest.fixture
def client(app: APIFlask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="session")
def worker(settings: Settings, app: APIFlask) -> Iterator[Worker]:
    """One real prefork worker for the session, on the test broker and database."""
    proc = Worker(settings, ROOT / "var" / "test-logs" / "worker.log")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def restore_globals(settings: Settings, app: APIFlask) -> Iterator[None]:
    """For tests that build apps with other settings: put the shared extensions back."""
    yield
    create_app(settings)
    # Re-push nothing: the autouse fixture's context belongs to `app`, whose config is intact.


def pytest_configure(config: pytest.Config) -> None:
    (Path(ROOT) / "var" / "test-logs").mkdir(parents=True, exist_ok=True)
