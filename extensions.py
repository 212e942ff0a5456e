"""Unbound extension objects, bound to an app in `create_app` (the Flask factory pattern).

Import these anywhere; they only work inside an app (or Celery task) context.

The database is plain SQLAlchemy 2.0 rather than Flask-SQLAlchemy: the same object serves
web requests and Celery tasks, and the worker resets the pool after fork (`dispose`).
Only services commit; models and helpers never do. With DATABASE_REPLICA_URL the reads
that tolerate lag run inside `db.replica_reads()`, which sends the session's reads to the
replica; without one it changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, cast

import psycopg
import redis as redis_lib
from celery import Celery
from flask import Flask
from flask_jwt_extended import JWTManager
from psycopg.rows import RowFactory
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import CursorResult, Engine, Executable, Select, create_engine, event
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.exc import DBAPIError, InvalidatePoolError, StatementError
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.sql.dml import UpdateBase

from config import Settings
from pg_timeouts import Timeouts, warn_if_different
from redis_urls import redis_client

RowT = TypeVar("RowT")

# A pooled connection idle longer than this is pinged before it is handed out.
PING_AFTER_IDLE_SECONDS = 1.0
Pooler = Literal["none", "transaction"]


def ping_idle_connections(engine: Engine, idle_seconds: float) -> None:
    """Pessimistic disconnect handling, but only for connections that sat idle.

    `pool_pre_ping=True` pings on EVERY checkout: under load that is one extra round trip
    per request (and per outbox publish) to prove that a connection which answered a
    query a few milliseconds ago is still there. A restart, a failover or an idle
    timeout (PgBouncer, a NAT) kills connections while they wait in the pool, so those
    are the ones worth pinging: a connection back in the pool for `idle_seconds` or
    longer is pinged on checkout. A failed ping means the server went away, so, as
    pool_pre_ping does, every connection pooled before it is discarded and the checkout
    retried on a new one (SQLAlchemy does both on InvalidatePoolError). A connection that
    dies within `idle_seconds` of its last use fails its query instead, as it would have
    had it died mid-request, and SQLAlchemy then invalidates the pool the same way.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
        entry.info["idle_since"] = time.monotonic()  # `info` lives as long as the connection

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, entry: ConnectionPoolEntry, proxy: Any) -> None:
        idle_since = entry.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return  # brand new, or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise InvalidatePoolError("a pooled connection failed its ping") from exc


@dataclass(frozen=True, slots=True)
class Read(Generic[RowT]):
    """One SELECT for `Database.read_one`, compiled once (at import): its SQL text and the
    psycopg row factory that builds what the caller wants from a row."""

    sql: str
    row_factory: RowFactory[RowT]

    @classmethod
    def of(cls, statement: Select[Any], row_factory: RowFactory[RowT]) -> Read[RowT]:
        """Compile a Core SELECT whose parameters are all `bindparam`s the caller fills.

        Values must be ones psycopg adapts itself (our models use only native types): no
        SQLAlchemy type processing runs on this path, in either direction."""
        compiled = statement.compile(dialect=_PSYCOPG)
        if any(not bind.required for bind in compiled.binds.values()):
            raise ValueError("bind every value with bindparam(); literals are not carried")
        if compiled.post_compile_params or compiled.literal_execute_params:
            raise ValueError("expanding (IN) parameters need SQLAlchemy's execution")
        return cls(str(compiled), row_factory)


_PSYCOPG = psycopg_dialect()  # type: ignore[no-untyped-call]


# The replica engine while `Database.replica_reads()` is in force in this thread or task.
_READ_FROM: ContextVar[Engine | None] = ContextVar("read_from", default=None)


class _RoutedSession(Session):
    """A Session that sends its reads to the replica inside `Database.replica_reads()`.

    Flushes and INSERT/UPDATE/DELETE statements always go to the primary (SQLAlchemy's
    "custom vertical partitioning" recipe); the replica's transactions are READ ONLY, so
    a write that slipped through would fail loudly rather than land there. Only sessions
    of a Database with a replica are of this class: the override costs ~0.3 us per
    statement, which a process without a replica does not pay."""

    def get_bind(self, mapper: Any = None, *, clause: Any = None, **kw: Any) -> Any:
        replica = _READ_FROM.get()
        if replica is not None and not self._flushing and not isinstance(clause, UpdateBase):
            return replica
        return super().get_bind(mapper, clause=clause, **kw)


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """How the engines connect and pool (config.py's DB_* settings say why each)."""

    pool_size: int = 5
    max_overflow: int = 0
    pool_timeout_seconds: float = 5.0
    pool_recycle_seconds: int = 0  # 0: never
    ping_after_idle_seconds: float = PING_AFTER_IDLE_SECONDS
    pooler: Pooler = "none"
    prepared_statements: bool = True
    timeouts: Timeouts = field(default_factory=Timeouts)

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineOptions:
        return cls(
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout_seconds=settings.db_pool_timeout_seconds,
            pool_recycle_seconds=settings.db_pool_recycle_seconds,
            pooler=settings.db_pooler,
            prepared_statements=settings.db_uses_prepared_statements,
            timeouts=Timeouts.from_settings(settings),
        )

    def connect_args(self) -> dict[str, Any]:
        """psycopg.connect's arguments: nothing a transaction-mode pooler would refuse or
        lose between transactions when `pooler` says there is one."""
        args: dict[str, Any] = {"connect_timeout": 3}  # never hang a request on a dead database
        if self.pooler == "none":
            args["options"] = self.timeouts.startup_options()
        if not self.prepared_statements:
            args["prepare_threshold"] = None  # psycopg: never PREPARE on the server
        return args


class Database:
    """Holds the engine (and the replica's) and a thread/task-scoped session once
    `init_app` has run."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._replica: Engine | None = None
        self._configured: tuple[str, str, EngineOptions] | None = None
        self._factory = sessionmaker(expire_on_commit=False)
        self._plain_session = self._factory.class_
        self.session: scoped_session[Session] = scoped_session(self._factory)

    def init_app(self, app: Flask) -> None:
        settings = app.config["SETTINGS"]
        options = EngineOptions.from_settings(settings)
        self.configure(settings.database_url, options, replica_url=settings.database_replica_url)
        app.teardown_appcontext(self._remove_session)

    def configure(
        self, url: str, options: EngineOptions | None = None, *, replica_url: str = ""
    ) -> None:
        options = options or EngineOptions()
        if self._configured == (url, replica_url, options):
            return
        self._engine = _create_engine(url, options)
        self._replica = None
        if replica_url:
            self._replica = _create_engine(replica_url, options, read_only=True)
        self._configured = (url, replica_url, options)
        self._factory.configure(bind=self._engine)
        # For the sessions made from now on (events registered on Session apply to both).
        self._factory.class_ = self._plain_session if self._replica is None else _RoutedSession

    @property
    def replica(self) -> Engine | None:
        """The replica's engine (DATABASE_REPLICA_URL), or None when there is none."""
        return self._replica

    @contextmanager
    def replica_reads(self) -> Iterator[None]:
        """Inside: the session's reads go to the replica, for reads that tolerate its lag.

        They run in a READ ONLY transaction of the replica's own, beside the session's
        transaction on the primary, and both end with the session (commit, rollback or
        the request's end). What is read there is as old as the replica: rows loaded
        inside stay in the session's identity map as read. Without a replica nothing
        changes. Flushes and writes inside still go to the primary."""
        if self._replica is None:
            yield
            return
        token = _READ_FROM.set(self._replica)
        try:
            yield
        finally:
            _READ_FROM.reset(token)

    def reset_after_fork(self) -> None:
        """Forget the parent's pooled connections (a forked child must not share sockets)."""
        for engine in (self._engine, self._replica):
            if engine is not None:
                engine.dispose(close=False)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("Database is not configured; call create_app() first")
        return self._engine

    def read_one(self, read: Read[RowT], params: Mapping[str, Any]) -> RowT | None:
        """The first row of one SELECT run in autocommit on a pooled psycopg connection.

        For the reads every request makes (a job's status, the team guard): SQLAlchemy's
        Connection, execution context and result cost about as much CPU as the SELECT
        itself (0.25 ms against 0.15 ms for a job's status). The connection still comes
        from the engine's pool, so its sizing, the idle ping and invalidation apply, and
        errors surface as SQLAlchemy's `DBAPIError`s, a lost connection flagged
        `connection_invalidated` and never pooled again. It sees committed rows only,
        never what the caller's session holds."""
        try:
            proxied = self.engine.raw_connection()
        except psycopg.Error as exc:  # could not connect at all
            raise self._failed(exc, None, read.sql, params) from exc
        try:
            connection = cast("psycopg.Connection[Any]", proxied.dbapi_connection)
            try:
                # No BEGIN before and no ROLLBACK after: one SELECT is its own snapshot.
                connection.autocommit = True
                with connection.cursor(row_factory=read.row_factory) as cursor:
                    row = cursor.execute(read.sql, params).fetchone()
                connection.autocommit = False  # as every other checkout expects it
            except psycopg.Error as exc:
                raise self._failed(exc, proxied, read.sql, params) from exc
            except BaseException:
                proxied.invalidate()  # interrupted half-way: its state is unknown
                raise
        finally:
            proxied.close()  # back to the pool (a no-op ROLLBACK), or away if invalidated
        return row

    def _failed(
        self,
        exc: psycopg.Error,
        proxied: PoolProxiedConnection | None,
        sql: str,
        params: Mapping[str, Any],
    ) -> StatementError:
        """What SQLAlchemy's Connection does with a failed statement, for `read_one`."""
        engine = self.engine
        connection = proxied.dbapi_connection if proxied is not None else None
        lost = engine.dialect.is_disconnect(cast(Any, exc), connection, None)
        if proxied is not None:
            if lost:
                # Connections opened before this one are suspect too (a restart killed
                # them all): recycled on their next checkout, as Connection does.
                engine.pool._invalidate(proxied, exc)
            else:
                try:
                    cast("psycopg.Connection[Any]", connection).autocommit = False
                except psycopg.Error:
                    proxied.invalidate(exc)
        return DBAPIError.instance(
            sql, dict(params), exc, psycopg.Error,
            hide_parameters=engine.hide_parameters, connection_invalidated=lost,
            dialect=engine.dialect,
        )  # fmt: skip

    def write(self, statement: Executable, row: dict[str, Any]) -> CursorResult[Any]:
        """One Core statement (a hot INSERT) in the session's transaction, after flushing
        what the session holds so the rows it refers to exist: about 120 us of CPU where
        the ORM's bulk INSERT of the same row takes about 290 us."""
        session = self.session
        if session.new or session.dirty or session.deleted:
            session.flush()
        return session.connection().execute(statement, row)

    def _remove_session(self, _exc: BaseException | None = None) -> None:
        self.session.remove()


def _create_engine(url: str, options: EngineOptions, *, read_only: bool = False) -> Engine:
    engine = create_engine(
        url,
        pool_size=options.pool_size,
        max_overflow=options.max_overflow,
        pool_timeout=options.pool_timeout_seconds,
        pool_recycle=options.pool_recycle_seconds or -1,
        connect_args=options.connect_args(),
    )
    ping_idle_connections(engine, options.ping_after_idle_seconds)
    if read_only:
        # BEGIN READ ONLY instead of BEGIN: the same round trip, and no startup option
        # (default_transaction_read_only) that a transaction-mode pooler would refuse.
        event.listen(engine, "connect", _begin_read_only)
    if options.pooler == "transaction":
        # Behind a pooler the timeouts are the role's settings: say so if they are not.
        timeouts = options.timeouts
        event.listen(
            engine, "first_connect", lambda conn, _entry: warn_if_different(timeouts, conn)
        )
    return engine


def _begin_read_only(dbapi_connection: Any, _entry: ConnectionPoolEntry) -> None:
    dbapi_connection.read_only = True


class RedisClient:
    """Proxy to one `redis.Redis` connection pool with short timeouts."""

    def __init__(self) -> None:
        self._client: redis_lib.Redis | None = None

    def init_app(self, app: Flask) -> None:
        settings = app.config["SETTINGS"]
        self.configure(settings.redis_url, settings.redis_sentinel_master)

    def configure(self, url: str, sentinel_master: str = "") -> None:
        """Connect to `url`; a Sentinel URL (with its master's name) connects to whichever
        server the sentinels name master, again after a failover."""
        # Short timeouts: a Redis outage must surface as a fast error, never a hung request.
        # redis-py 7 retries a refused connection with backoff for ~10 s by default; one
        # quick retry is enough to ride over a reconnect without stalling requests.
        self._client = redis_client(
            url,
            sentinel_master,
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
# Configured from celeryconfig.py inside create_app; tasks import this object.
celery_app = Celery("maycole")
