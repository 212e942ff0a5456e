"""Readiness checks of every dependency the app needs to serve requests.

That is the web's readiness (`GET /readyz`); liveness (`GET /healthz`) does no I/O at all.
Workers are judged by whether they consume: `scripts/worker_check.py`
(services/ops/worker_liveness.py).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text

from extensions import celery_app, db, redis

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


@lru_cache(maxsize=1)
def migration_heads() -> frozenset[str]:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return frozenset(ScriptDirectory.from_config(config).get_heads())


def check_postgresql() -> str | None:
    """None if PostgreSQL answers and the schema is at the latest migration."""
    try:
        with db.engine.connect() as conn:
            applied = set(conn.scalars(text("SELECT version_num FROM alembic_version")))
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        return f"unreachable ({type(exc).__name__})"
    if applied != migration_heads():
        return "migrations are not at head (run `make migrate`)"
    return None


def check_redis() -> str | None:
    try:
        redis.client.ping()
    except Exception as exc:  # noqa: BLE001
        return f"unreachable ({type(exc).__name__})"
    return None


def check_broker() -> str | None:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:  # noqa: BLE001
        return f"unreachable ({type(exc).__name__})"
    return None


def readiness() -> dict[str, str]:
    """Each dependency's state: "ok" or why it is not usable."""
    checks = {"postgresql": check_postgresql(), "redis": check_redis(), "broker": check_broker()}
    return {name: problem or "ok" for name, problem in checks.items()}
