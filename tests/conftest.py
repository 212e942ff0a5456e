"""Fixtures: a freshly migrated PostgreSQL database, the app, isolation, a real worker.

`make test` provides DATABASE_URL (database maycole_test) and REDIS_URL (db 15), found
or started by scripts/devservices.py; under pytest-xdist each worker process gwN moves to
database maycole_test_gwN and db 15-N (tests/support/workerdb.py). Each test starts from
empty tables. `BROKER=rabbitmq make test` runs the suite's broker (the session worker's
and every app's but the private stacks') on RabbitMQ, a vhost per test process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient

from app import create_app
from blueprints.common.ratelimits import limiter
from cli import rebuild_schema
from config import Settings
from extensions import db
from scripts.devservices import free_port
from tests.support import (
    LOGS,
    LocalStripe,
    Mailbox,
    MotoS3,
    PrivateStacks,
    Worker,
    make_settings,
    truncate_all_tables,
)
from tests.support.rabbitmq import RabbitVhost, use_own_vhost
from tests.support.workerdb import give_role_timeouts, use_own_services

SUITE_VHOST = pytest.StashKey[RabbitVhost | None]()

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
    """Drop everything, then build the schema with the real migrations (on PostgreSQL
    itself when the suite runs through PgBouncer, as a deploy's migrations do); behind
    a transaction pooler, give the role its timeouts as `flask db timeouts` does."""
    rebuild_schema(settings.migrations_database_url)
    if settings.db_pooler == "transaction":
        give_role_timeouts(settings)
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
        truncate_all_tables()
        limiter.reset()
        if "mailbox" in request.fixturenames:
            request.getfixturevalue("mailbox").messages.clear()


@pytest.fixture
def client(app: APIFlask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="session")
def worker(settings: Settings, app: APIFlask) -> Iterator[Worker]:
    """One real prefork worker for the session, on the test broker and database."""
    proc = Worker(settings, LOGS / "worker.log")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def private_stack(settings: Settings, app: APIFlask, tmp_path: Path) -> Iterator[PrivateStacks]:
    """Build apps on settings of a test's own (`private_stack(**changes)`, see
    tests/support/stack.py), with a broker of their own if asked; afterwards stop what
    was started and put the shared extensions back on the session's app."""
    stacks = PrivateStacks(settings, tmp_path)
    try:
        yield stacks
    finally:
        stacks.close()


@pytest.fixture
def restore_globals(settings: Settings, app: APIFlask) -> Iterator[None]:
    """For tests that build apps with other settings: put the shared extensions back."""
    yield
    create_app(settings)
    # Re-push nothing: the autouse fixture's context belongs to `app`, whose config is intact.


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist each worker process gets a database and a Redis db of its own;
    # on RabbitMQ (`BROKER=rabbitmq make test`) each test process a vhost of its own.
    use_own_services()
    config.stash[SUITE_VHOST] = use_own_vhost()
    LOGS.mkdir(parents=True, exist_ok=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    if vhost := config.stash.get(SUITE_VHOST, None):
        vhost.delete()
