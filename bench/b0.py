"""B0: the least a route of each kind can cost on this stack, the web rows' baselines.

Two plain Flask apps (no APIFlask, no ORM, no hooks, no schemas), served by the same
gunicorn.conf.py as the app (`Gunicorn(..., app=WRITE_APP)`), with the same settings
from the environment: the same JWT secret, PostgreSQL database, Redis and Celery broker.
Each does, per request, only what no implementation of its kind of route can skip:

* `create_write_app()`, POST /b0/teams/<team_id>/exports (B1's kind): decode the HS256
  bearer token (PyJWT: signature, expiry, `type` = access), one Redis round trip (the
  limiter's fixed-window script, INCRBY + EXPIRE + TTL in one EVALSHA, blueprints/common/
  ratelimits.py), INSERT one `jobs` row (an `exports.build` job of the token's user and
  the path's team, as `services.jobs.outbox.enqueue` fills it) and commit, publish its
  Celery message (`extensions.celery_app` configured by `celeryconfig.build(settings)`:
  the same `send_task` as the outbox, so the same message and route, and a task-sent
  event exactly when the app sends one: CELERY_TASK_SENT_EVENTS, off by default),
  answer 202 with the job;
* `create_read_app()`, GET /b0/jobs/<job_id> (B2's kind): decode the token, the same
  Redis round trip, `SELECT ... FROM jobs WHERE id = %s` (primary key), the owner
  checked, the job as JSON.

PostgreSQL through psycopg 3 directly: one connection per gunicorn thread
(threading.local; psycopg_pool is not a dependency), autocommit, so the INSERT is its own
transaction, committed when it returns, and the SELECT runs outside any transaction: one
round trip each (statements are prepared by psycopg after a few runs). What B0 leaves
out is what makes a real route: revocation and user checks, membership and permissions,
validation, audit rows, the outbox's "published" mark, metrics, logs and headers.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime
from typing import Any

import jwt as pyjwt
import psycopg
import redis as redis_lib
from flask import Flask, abort, request
from limits import parse as parse_limit
from psycopg.types.json import Jsonb
from sqlalchemy import make_url

import celeryconfig
from blueprints.common.ratelimits import RedisWindowStorage
from config import Settings, load_settings
from extensions import celery_app
from services.jobs import names
from services.jobs.queues import queue_for

WRITE_APP = "bench.b0:create_write_app()"  # for gunicorn
READ_APP = "bench.b0:create_read_app()"
WRITE_PATH = "/b0/teams/{team_id}/exports"
READ_PATH = "/b0/jobs/{job_id}"
REQUEST_ID_PREFIX = "b0-"  # B0-write's job rows carry it (b_http cancels them afterwards)

INSERT_JOB = (
    "INSERT INTO jobs (id, type, queue, status, args, user_id, team_id, progress, attempts,"
    " max_attempts, request_id, run_after)"
    " VALUES (%s, %s, %s, 'queued', %s, %s, %s, 0, 0, %s, %s, now())"
    " RETURNING created_at"
)
# What GET /api/v1/jobs/<id> shows of a job (blueprints/jobs/schemas.py JobOut, less links).
JOB_FIELDS = ("id", "type", "status", "progress", "created_at", "started_at", "finished_at",
              "attempts", "error", "result")  # fmt: skip
SELECT_JOB = (
    "SELECT id, type, status, progress, created_at, started_at, finished_at, attempts, error,"
    " result, user_id FROM jobs WHERE id = %s"
)


class Stack:
    """One process's clients: the token check, the limiter script and the database."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.secret = settings.jwt_secret_key
        limit = parse_limit(settings.ratelimit_default)
        self.limit, self.window = limit.amount, limit.get_expiry()
        client = redis_lib.Redis.from_url(
            settings.redis_url, socket_timeout=1, socket_connect_timeout=1
        )
        self.incr_expire_ttl = client.register_script(RedisWindowStorage.SCRIPT_INCR_EXPIRE_TTL)
        self.dsn = libpq_url(settings.database_url)
        self.local = threading.local()

    def caller(self) -> uuid.UUID:
        """The token's user (401 unless a valid access token), counted by the limiter."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme != "Bearer" or not token:
            abort(401)
        try:
            claims = pyjwt.decode(token, self.secret, algorithms=["HS256"])
        except pyjwt.PyJWTError:
            abort(401)
        if claims.get("type") != "access" or "sub" not in claims:
            abort(401)
        user_id = uuid.UUID(claims["sub"])
        key = f"LIMITS:b0/user:{user_id}"
        count, _ttl = self.incr_expire_ttl([key], [self.window, 1])
        if int(count) > self.limit:
            abort(429)
        return user_id

    def connection(self) -> psycopg.Connection[Any]:
        """This thread's connection (opened on first use, autocommit)."""
        conn: psycopg.Connection[Any] | None = getattr(self.local, "conn", None)
        if conn is None or conn.closed:
            timeout = self.settings.db_statement_timeout_ms
            conn = psycopg.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=3,
                options=f"-c statement_timeout={timeout}",
            )
            self.local.conn = conn
        return conn


def _app(name: str) -> Flask:
    app = Flask(name)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def create_write_app(settings: Settings | None = None) -> Flask:
    """B0-write: token, limiter round trip, INSERT + commit of one job, one publish; 202."""
    settings = settings or load_settings()
    stack = Stack(settings)
    celery_app.conf.update(celeryconfig.build(settings))
    task_name = names.EXPORTS_BUILD
    queue = queue_for(task_name)
    app = _app("b0_write")

    @app.post("/b0/teams/<uuid:team_id>/exports")
    def start_export(team_id: uuid.UUID) -> tuple[dict[str, Any], int]:
        user_id = stack.caller()
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            abort(400)
        job_id = uuid.uuid4()
        request_id = REQUEST_ID_PREFIX + uuid.uuid4().hex
        args = {"export_id": str(uuid.uuid4())}
        values = (job_id, task_name, queue, Jsonb(args), user_id, team_id,
                  settings.task_max_attempts, request_id)  # fmt: skip
        row = stack.connection().execute(INSERT_JOB, values).fetchone()
        celery_app.send_task(
            task_name,
            args=[str(job_id)],
            task_id=str(job_id),
            queue=queue,
            headers={"request_id": request_id},
        )
        created_at = row[0] if row else None
        job = {"id": str(job_id), "type": task_name, "status": "queued",
               "created_at": _iso(created_at)}  # fmt: skip
        return {"job": job}, 202

    return app


def create_read_app(settings: Settings | None = None) -> Flask:
    """B0-read: token, limiter round trip, one SELECT by primary key, the job as JSON."""
    stack = Stack(settings or load_settings())
    app = _app("b0_read")

    @app.get("/b0/jobs/<uuid:job_id>")
    def get_job(job_id: uuid.UUID) -> dict[str, Any]:
        user_id = stack.caller()
        row = stack.connection().execute(SELECT_JOB, (job_id,)).fetchone()
        if row is None or row[-1] != user_id:
            abort(404)
        job = dict(zip(JOB_FIELDS, row[: len(JOB_FIELDS)], strict=True))
        job["id"] = str(job["id"])
        for name in ("created_at", "started_at", "finished_at"):
            job[name] = _iso(job[name])
        return {"job": job}

    return app


def libpq_url(database_url: str) -> str:
    """The settings' SQLAlchemy URL (postgresql+psycopg://) as libpq takes it."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
