"""Unbound extension objects, bound to an app in `create_app` (the Flask factory pattern).

Import these anywhere; they only work inside an app (or Celery task) context.

The database is plain SQLAlchemy 2.0 rather than Flask-SQLAlchemy: the same object serves
web requests and Celery tasks, and the worker resets the pool after fork (`dispose`).
Only services commit; models and helpers never do.
"""

from __future__ import annotations

from typing import Any

import redis as redis_lib
from celery import Celery
from flask import Flask
from flask_jwt_extended import JWTManager
from flask_limiter import Limiter
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from blueprints.common.ratelimits import principal_key


class Database:
    """Holds the engine and a thread/task-scoped session once `init_app` has run."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._factory = sessionmaker(expire_on_commit=False)
        self.session: scoped_session[Session] = scoped_session(self._factory)

    def init_app(self, app: Flask) -> None:
        settings = app.config["SETTINGS"]
        self.configure(
            settings.database_url,
            settings.db_pool_size,
            settings.db_statement_timeout_ms,
        )
        app.teardown_appcontext(self._remove_session)

    def configure(self, url: str, pool_size: int = 5, statement_timeout_ms: int = 30_000) -> None:
        if (
            self._engine is not None
            and self._engine.url.render_as_string(hide_password=False) == url
        ):
            return
        connect_args: dict[str, Any] = {
            "connect_timeout": 3,  # never hang a request on a dead database
            "options": f"-c statement_timeout={statement_timeout_ms}",
        }
        self._engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            pool_timeout=5,
            connect_args=connect_args,
        )
        self._factory.configure(bind=self._engine)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("Database is not configured; call create_app() first")
        return self._engine

    def _remove_session(self, _exc: BaseException | None = None) -> None:
        self.session.remove()


class RedisClient:
    """Proxy to one `redis.Redis` connection pool with short timeouts."""

    def __init__(self) -> None:
        self._client: redis_lib.Redis | None = None

    def init_app(self, app: Flask) -> None:
        self.configure(app.config["SETTINGS"].redis_url)

    def configure(self, url: str) -> None:
        # Short timeouts: a Redis outage must surface as a fast error, never a hung request.
        # redis-py 7 retries a refused connection with backoff for ~10 s by default; one
        # quick retry is enough to ride over a reconnect without stalling requests.
        self._client = redis_lib.Redis.from_url(
            url,
            socket_timeout=2,
            socket_connect_timeout=2,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1),
        )

    @property
    def client(self) -> redis_lib.Redis:
        if self._client is None:
            raise RuntimeError("Redis is not configured; call create_app() first")
        return self._client


db = Database()
redis = RedisClient()
jwt = JWTManager()
# Strategy, storage and default limits come from config (RATELIMIT_*); the default limit
# counts per signed-in user or API key, and per address for anonymous callers.
limiter = Limiter(key_func=principal_key)
# Configured from celeryconfig.py inside create_app; tasks import this object.
celery_app = Celery("maycole")
