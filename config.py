"""Typed settings read from the environment (and `.env`), in one place.

Every other module asks `current_app.config` or a `Settings` instance; nothing else reads
`os.environ`. Without `APP_ENV=development` or `APP_ENV=test` the settings are
production's, which refuse to start without real secrets and a metrics token.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from redis_urls import is_sentinel_url, parse_sentinel_url

# Frontend dev servers allowed by CORS in development when CORS_ORIGINS is unset: React/
# Next (3000), Vite (5173), Angular (4200), Vue CLI and webpack (8080), by either name.
DEV_CORS_ORIGINS = tuple(
    f"http://{host}:{port}"
    for host in ("localhost", "127.0.0.1")
    for port in (3000, 5173, 4200, 8080)
)
# Only for development and tests, which must say so (APP_ENV); production refuses it.
DEV_SECRET = "dev-only-secret-change-me-0123456789abcdef"
# The audit chain's key in development and tests only (see _require_audit_keys).
DEV_AUDIT_KEYS = "dev:dev-only-audit-key-change-me-0123456789abcdef"
_AUDIT_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,16}")
MIN_SECRET_LENGTH = 32
_SECRET_HINT = (
    "set SECRET_KEY and JWT_SECRET_KEY to two different random values of "
    f"{MIN_SECRET_LENGTH}+ characters (python -c 'import secrets; "
    "print(secrets.token_urlsafe(48))'), or APP_ENV=development for local work"
)


class Settings(BaseSettings):
    """All configuration of the web app, the workers and beat."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    # Unset means production: the development secret must be asked for by name.
    app_env: Literal["development", "test", "production"] = "production"
    secret_key: str = DEV_SECRET
    jwt_secret_key: str = DEV_SECRET
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/maycole"
    # Plain Redis (redis://, rediss://, unix://) or Redis behind Sentinel in kombu's form,
    # sentinel://[:password@]host:port[/db];sentinel://host2:port2;... (credentials and db
    # from the first entry, for the master), with REDIS_SENTINEL_MASTER naming the master
    # the sentinels monitor (redis_urls.py; README "On Redis Sentinel").
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Empty means "the same Redis as REDIS_URL"; a RabbitMQ URL (amqp://) or a Sentinel
    # URL works too.
    celery_broker_url: str = ""
    # The master's name in the sentinels' `sentinel monitor <name> ...`: required when
    # REDIS_URL or CELERY_BROKER_URL is a sentinel:// URL, ignored otherwise.
    redis_sentinel_master: str = ""
    # RabbitMQ only (celeryconfig.py): quorum queues (replicated, durable, with a delivery
    # limit) rather than classic ones. Switching an existing vhost's queues between the two
    # needs them deleted first: RabbitMQ refuses to redeclare a queue with another type.
    broker_quorum_queues: bool = True
    # RabbitMQ quorum queues: a message redelivered this many times (its worker killed or
    # disconnected each time) is dead-lettered, and its job becomes a dead letter of ours.
    broker_delivery_limit: PositiveInt = 10

    # Connections a process keeps (web: per gunicorn worker; Celery: per pool process).
    # All of them stay open once made: SQLAlchemy closes an overflow connection the moment
    # it is given back, so a pool smaller than the threads using it at once reconnects
    # all the time (measured 2026-12-07: with 10 + 10 overflow, 12% of export POSTs at 32
    # connections opened a new PostgreSQL connection). Overflow is for a burst above a
    # pool sized to the threads; the ceiling per process is the sum of the two.
    db_pool_size: int = 20
    db_max_overflow: int = 0
    # A request waiting this long for a pooled connection fails (503) instead of queueing
    # behind an exhausted pool: by then its client has waited long enough to retry.
    db_pool_timeout_seconds: PositiveFloat = 5.0
    # A pooled connection older than this is closed and opened again on its next checkout
    # (0 = never): a backend's caches grow with every table and plan it touched, and after
    # a failover behind a DNS name this moves every process onto the new server. One
    # reconnect (a few ms) per connection per half hour.
    db_pool_recycle_seconds: NonNegativeInt = 1800

    # What sits between the app and PostgreSQL (README "Behind PgBouncer"). `none`:
    # PostgreSQL itself (or a session-mode pooler). `transaction`: a transaction-mode pooler
    # (PgBouncer, pgcat, RDS Proxy), which hands each transaction to whichever server
    # connection is free: the app then sends no startup `options` (PgBouncer refuses them
    # at connect) and, unless DB_PREPARED_STATEMENTS says otherwise, prepares nothing on
    # the server; the timeouts below must then be the role's own (`flask db timeouts`).
    db_pooler: Literal["none", "transaction"] = "none"
    # psycopg prepares a statement on the server after its 5th execution on a connection,
    # which saves the server its planning. Behind a transaction pooler the next execution
    # may land on a server connection that never saw the PREPARE; PgBouncer 1.21+ with
    # `max_prepared_statements` set tracks them itself, so `true` is right there.
    # `auto`: on, unless DB_POOLER=transaction.
    db_prepared_statements: bool | Literal["auto"] = "auto"
    # Server-side limits every connection runs under (0 = none). Without a pooler they
    # travel in the startup packet (no round trip); behind one they are the role's
    # settings in the database, which `flask db timeouts` writes and every process checks
    # once (a warning, `database_timeouts_differ`, when a connection sees other values).
    # A statement running longer than this is cancelled: no request holds a backend (and
    # its locks) for minutes. An export's COPY raises it for its own transaction.
    db_statement_timeout_ms: NonNegativeInt = 30_000
    # A statement waiting this long for a lock gives up (SQLSTATE 55P03): a request stuck
    # behind a long transaction fails with "lock timeout" in the log rather than using up
    # its whole statement timeout, and a waiting ALTER in a migration stops blocking
    # everyone queued behind it. Above the longest lock the app holds on purpose (an
    # all-teams aggregation run, 7-9 s over 5 million events in bench B8).
    db_lock_timeout_ms: NonNegativeInt = 15_000
    # A session idle inside an open transaction this long is ended by the server: a leaked
    # transaction would hold its locks and, behind a transaction pooler, a server
    # connection for ever. Well above the longest the app waits inside a transaction
    # between two statements (an outside call of at most 10 s; storing a finished xlsx
    # export or an upload's verified copy, tens of MB).
    db_idle_in_transaction_timeout_ms: NonNegativeInt = 300_000
    # A read replica for reads that tolerate its lag: the dashboard's team figures, search,
    # metric series and report figures, and an export's rows (`db.replica_reads()` in
    # extensions.py). Its transactions are READ ONLY. Empty: everything reads the primary.
    database_replica_url: str = ""
    # PostgreSQL itself when DATABASE_URL goes through a pooler: `flask db upgrade` and the
    # other migration commands connect here (a migration may hold a lock or run a
    # statement longer than a pooled transaction should). Empty: DATABASE_URL.
    database_direct_url: str = ""

    access_token_minutes: int = 15
    refresh_token_days: int = 30
    # How long a process may reuse a token's user row (is_active, is_admin, ...) without
    # reading it again; any change to the row is still seen on the next request through
    # a per-user generation key read with the revocation check (README "Identity").
    # 0 reads the row on every request.
    user_cache_seconds: float = 5.0
    max_content_length: int = 1_048_576  # bytes; 413 above it
    ratelimit_default: str = "600/minute"
    ratelimit_enabled: bool = True
    # While Redis cannot be reached, count limits in each process's memory (on) or answer
    # 503 until it is back (off). In memory, N processes allow N times every limit, login
    # attempts included: on in development and test (one process, Redis optional), off in
    # production, which refuses it on.
    ratelimit_memory_fallback: bool = False

    idempotency_ttl_hours: int = 24
    # A request holding a key longer than this is presumed dead (crashed process).
    idempotency_lock_seconds: int = 60

    # Celery reliability knobs (see celeryconfig.py for why each exists).
    broker_visibility_timeout: int = 3600
    task_time_limit: int = 900
    task_max_attempts: int = 5
    retry_backoff_base: float = 2.0  # seconds before the 2nd attempt; doubles each time
    retry_backoff_max: int = 300  # seconds; must stay far below the visibility timeout
    job_heartbeat_seconds: float = 2.0
    job_stale_seconds: int = 30
    relay_interval_seconds: float = 5.0
    relay_min_age_seconds: float = 5.0
    # Sent jobs are marked published by a background thread per process, one UPDATE per
    # this interval (services/jobs/outbox.py), not by a second transaction per request.
    # Keep it far below RELAY_MIN_AGE_SECONDS, or the relay re-sends rows not yet marked.
    outbox_mark_interval_seconds: Annotated[float, Field(gt=0, le=1.0)] = 0.2
    # Celery's "task-sent" event: one more broker message per published job, only so that
    # Flower lists a task before a worker takes it. Off: it cost about half of kombu's
    # publish in every request that enqueues; Flower still shows each task from the moment
    # a worker receives it, and waiting jobs are in the jobs table (GET /api/v1/admin/jobs)
    # and the queue-age metric. The queue-latency benchmark (B3) turns it on to time
    # publications.
    celery_task_sent_events: bool = False
    # Beat's leader lease in Redis (tasks/runtime/beat_scheduler.py): renewed every tick,
    # so a killed leader is replaced after at most BEAT_LEASE_SECONDS; a standby asks for
    # it every BEAT_STANDBY_RETRY_SECONDS. Which periods were sent lives in PostgreSQL, not
    # in the lease, so a shorter lease only hands over sooner (two beats that both think
    # they lead still send each period once); it saves the beats from racing every tick.
    beat_lease_seconds: PositiveFloat = 30.0
    beat_standby_retry_seconds: PositiveFloat = 2.0

    # Deploys. SIGTERM drains a worker: it takes no new tasks and waits this long for the
    # running ones, then cancels the rest, whose messages go back to the queue (acks_late)
    # for the next worker. Keep the process manager's kill timeout above it (Kubernetes
    # terminationGracePeriodSeconds 30 by default; docker stop -t; systemd TimeoutStopSec).
    worker_shutdown_grace_seconds: PositiveFloat = 20.0
    # Gunicorn's graceful_timeout: on SIGTERM in-flight requests get this long to finish.
    web_shutdown_grace_seconds: PositiveInt = 30
    # Worker liveness (scripts/worker_check.py): each worker sends itself a heartbeat
    # message this often through the broker, on the connection it takes tasks from; the
    # check fails once none has arrived for WORKER_HEARTBEAT_MAX_AGE_SECONDS while the
    # worker had room to take one (alive but no longer consuming, celery#8030).
    worker_heartbeat_seconds: PositiveFloat = 10.0
    worker_heartbeat_max_age_seconds: PositiveFloat = 60.0
    # Where each worker keeps its heartbeat state (one small JSON file per worker node).
    worker_health_dir: str = "var/worker-health"

    # Identity: token lifetimes and the links emails point to.
    frontend_url: str = "http://localhost:3000"
    # This API's public address: one-click unsubscribe links in email and the local storage
    # backend's upload and download links point here. Unset, development and test derive
    # it from where the web process listens (BIND, else PORT: `PORT=18000 make run` hands
    # out 18000 links); production must say it (behind a proxy the bind address is never
    # the public one).
    public_api_url: str = ""
    # Where gunicorn listens (gunicorn.conf.py): BIND if set (host:port, unix:PATH), else
    # loopback on PORT.
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    bind: str = ""
    verify_email_token_hours: int = 48
    password_reset_token_minutes: int = 60
    invite_days: int = 7
    password_min_length: int = 10

    # Rate limits (limits-library syntax, e.g. "10/minute;100/hour"); configuration, not code.
    ratelimit_login: str = "10/minute;50/hour"
    ratelimit_register: str = "5/minute;50/hour"
    ratelimit_forgot_password: str = "5/minute"
    ratelimit_forgot_password_per_email: str = "3/hour"
    ratelimit_invites: str = "30/hour"
    ratelimit_team_create: str = "10/minute"

    # Credentials and sign-in abuse. Creating an API key needs the current password or a
    # sign-in younger than this (the sign-in's own time: refreshing tokens does not renew it).
    api_key_fresh_sign_in_seconds: PositiveInt = 300
    # Failed logins (wrong password or unknown account; successes never count). Per account
    # and address: the strict limit, which only the address that fails runs into. Per
    # account from all addresses: a looser one that slows a brute force spread over many
    # addresses; devices that signed in to the account before (same address and browser)
    # are exempt from it, so such an attack never locks the owner's own devices out.
    ratelimit_login_failures: str = "5/minute;20/hour"
    ratelimit_login_failures_per_account: str = "30/hour;100/day"
    # Wrong current passwords per user (password change, API-key creation): no guessing
    # oracle for whoever holds a stolen access token.
    ratelimit_password_confirm_failures: str = "5/minute;20/hour"
    # Event streams open at once per user, counted in Redis across all web processes.
    events_max_streams_per_user: PositiveInt = 10
    # An open stream re-checks its credential this often (and at every heartbeat), so a
    # logout or a password reset ends even a busy stream within seconds.
    events_credential_check_seconds: PositiveFloat = 5.0

    # HTTP edge: comma-separated frontend origins allowed by CORS (unset in development:
    # the usual frontend dev servers, DEV_CORS_ORIGINS, and FRONTEND_URL's origin; unset
    # elsewhere: none); how many proxies in front of us may set X-Forwarded-For/-Proto
    # (0 = trust none, use the socket peer).
    cors_origins: str = ""
    trusted_proxies: int = 0

    # Email: smtp://[user:pass@]host:port (?starttls=true) or smtps:// for implicit TLS.
    # Empty in development: `make run` starts a local sink that saves mail under var/mail/.
    smtp_url: str = ""
    smtp_timeout_seconds: float = 10.0
    mail_from: str = "Maycole <no-reply@maycole.local>"
    # More attempts than other jobs: backoff 2, 4, ... 128 s rides out a ~4-minute SMTP
    # outage (the breaker alone stays open 30 s) before mail goes to the dead letters.
    email_max_attempts: int = 8
    # Circuit breakers (shared through Redis): open after N failures, probe after T s.
    breaker_fail_max: int = 5
    breaker_reset_seconds: int = 30

    # Payments. Empty STRIPE_API_BASE = Stripe itself; `make run`/`make test` point it at a
    # local Stripe-compatible server (localstripe) when no real keys are configured.
    stripe_secret_key: str = ""
    stripe_api_base: str = ""
    stripe_webhook_secret: str = ""
    stripe_webhook_tolerance_seconds: int = 300
    stripe_timeout_seconds: float = 10.0
    # ISO-4217 codes accepted for payments (comma-separated).
    payment_currencies: str = "USD,EUR,GBP,CHF,CAD,AUD,JPY,SEK,NOK,DKK"
    # Payments keep trying longer than other jobs: a gateway outage must not fail a charge.
    payments_max_attempts: int = 10

    # Realtime events (GET /api/v1/events/stream; services/messaging/realtime.py). Each user's
    # events stay in Redis this long, so a reconnect with Last-Event-ID within it loses
    # nothing; an older id gets `event: reset` (refetch) instead.
    events_retention_seconds: int = 600
    # A `: keepalive` comment this often on an idle stream: well under the usual 60 s idle
    # timeout of proxies and load balancers (nginx proxy_read_timeout, AWS ALB).
    events_heartbeat_seconds: float = 15.0
    # A stream ends after this long (jittered 10% down) with a `retry:` hint; the client
    # reconnects with Last-Event-ID, so threads are recycled and credentials re-checked.
    events_max_stream_seconds: int = 300
    # Lifetime of a `?token=` stream token (EventSource cannot send headers; URLs get logged).
    events_token_seconds: int = 60
    # Streams one web process serves at once; keep it below gunicorn's threads (WEB_THREADS)
    # so the remaining threads always serve normal requests (see gunicorn.conf.py).
    events_max_streams_per_process: int = 24
    # Per user (or address): a reconnecting client needs one per stream lifetime.
    ratelimit_events_stream: str = "60/minute"

    # Files. "local" keeps objects under STORAGE_LOCAL_DIR and serves signed URLs from this
    # app (the default; development and test only: production refuses one host's disk);
    # "s3" uses S3_BUCKET (S3_ENDPOINT_URL for MinIO/moto/localstack).
    storage_backend: Literal["local", "s3"] = "local"
    storage_local_dir: str = "var/storage"
    s3_bucket: str = "maycole"
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_timeout_seconds: float = 10.0
    upload_max_bytes: int = 25 * 1024 * 1024
    # Comma-separated MIME types accepted for uploads.
    upload_allowed_types: str = (
        "image/png,image/jpeg,image/gif,image/webp,application/pdf,text/csv,text/plain"
    )
    upload_url_seconds: int = 600  # how long a presigned upload form stays valid
    download_url_seconds: int = 300  # how long a presigned download link stays valid
    pending_upload_hours: int = 24  # uploads never completed are removed after this
    export_retention_days: int = 7

    # Abuse limits on payments and analytics (issue 14). A team whose payments failed
    # PAYMENTS_FAILED_LIMIT times within PAYMENTS_FAILED_WINDOW_SECONDS takes no new
    # payment (429) until the oldest of those failures leaves the window: card testing
    # with stolen cards is a stream of declines. On-demand aggregation: one pending run
    # per team, and none sooner than ANALYTICS_AGGREGATE_COOLDOWN_SECONDS after the last.
    payments_failed_limit: PositiveInt = 5
    payments_failed_window_seconds: PositiveInt = 600
    analytics_aggregate_cooldown_seconds: NonNegativeInt = 60

    # Dashboard (GET /api/v1/teams/{id}/dashboard): the team-wide part is cached in Redis
    # and invalidated explicitly on every change; this TTL only bounds a missed invalidation.
    dashboard_cache_seconds: PositiveInt = 60
    # GET /metrics: with a token, callers must send `Authorization: Bearer <token>`;
    # without one, only loopback callers are answered (everyone else gets 404).
    # Required in production.
    metrics_token: str = ""

    # Flower (scripts/flower.py): always behind basic auth; loopback unless an ops network
    # is given, because its /metrics and /healthcheck bypass the login.
    flower_basic_auth: str = ""
    flower_address: str = "127.0.0.1"
    flower_port: int = 5555
    flower_db: str = "var/flower.db"  # persistent state: task history survives restarts

    # Edge security (issue 14). Behind a proxy on the same host the app must trust it
    # (TRUSTED_PROXIES), or every client is 127.0.0.1: one rate-limit bucket for the
    # world. So in production gunicorn refuses to start bound to loopback or a unix socket
    # with TRUSTED_PROXIES=0, unless this says clients really connect directly.
    allow_direct_loopback: bool = False
    # A file holding Flower's user:password (a Docker or Kubernetes secret); it wins over
    # FLOWER_BASIC_AUTH. Neither reaches Flower's command line, which every user can read.
    flower_basic_auth_file: str = ""

    log_level: str = "INFO"
    log_json: bool = True

    # Audit chain (services/core/audit.py). AUDIT_KEYS="<id>:<secret>,<id>:<secret>": the first
    # key signs new rows and chain heads, the others only verify what they signed before,
    # so rotating is prepending a new key (`flask audit rotate-key`) and history is never
    # re-signed. Kept outside the database on purpose: whoever can write the tables must
    # not be able to forge signatures. Required outside development and test.
    audit_keys: str = ""
    # Rows one GET .../audit-logs/verify checks at most; a longer chain answers with a
    # next_cursor to continue from, so no request walks an unbounded chain.
    audit_verify_max_rows: PositiveInt = 5000
    # Pending audit rows are linked into their chains by beat's `audit.seal` this often
    # (services/core/audit_chain.py): how long a row may wait for its place.
    audit_seal_interval_seconds: float = 2.0

    @model_validator(mode="before")
    @classmethod
    def _derive_public_api_url(cls, data: Any) -> Any:
        """Development and test without PUBLIC_API_URL: the address the web process binds."""
        if not isinstance(data, dict) or data.get("public_api_url"):
            return data
        if data.get("app_env", "production") not in ("development", "test"):
            return data  # production must name it (refused below when missing)
        port = data.get("port") or 8000
        address = web_bind_address(str(data.get("bind") or ""), port)
        return {**data, "public_api_url": local_api_url(address, port)}

    @model_validator(mode="before")
    @classmethod
    def _fallback_outside_production(cls, data: Any) -> Any:
        """Development and test count limits in memory while Redis is down unless told not to."""
        if not isinstance(data, dict) or "ratelimit_memory_fallback" in data:
            return data
        if data.get("app_env", "production") not in ("development", "test"):
            return data
        return {**data, "ratelimit_memory_fallback": True}

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.app_env != "production":
            return self
        for name in ("secret_key", "jwt_secret_key"):
            value = getattr(self, name)
            if value == DEV_SECRET or len(value) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"{name.upper()} is missing, short or the development secret while APP_ENV "
                    f"is production (the default when APP_ENV is unset): {_SECRET_HINT}"
                )
        if self.secret_key == self.jwt_secret_key:
            # One leaked secret must not forge both access tokens and storage/email links.
            raise ValueError(
                f"SECRET_KEY and JWT_SECRET_KEY must differ in production: {_SECRET_HINT}"
            )
        if len(self.metrics_token) < MIN_SECRET_LENGTH:
            # Loopback proves nothing behind a proxy on the same host (every caller is
            # 127.0.0.1), and /metrics shows revenue and user counts.
            raise ValueError(
                f"METRICS_TOKEN ({MIN_SECRET_LENGTH}+ random characters) is required in "
                "production; Prometheus sends it as `Authorization: Bearer <token>`"
            )
        if not self.public_api_url:
            # Nothing to derive it from (behind a proxy, the bind address is not the public
            # one): every unsubscribe link in email would point at an unreachable address.
            raise ValueError(
                "PUBLIC_API_URL (this API's public base URL, e.g. https://api.example.com) "
                "is required in production"
            )
        if self.storage_backend == "local":
            # Other hosts' web and worker processes cannot read this host's disk, and the
            # files die with it: an upload processed elsewhere, an export link that 404s.
            raise ValueError(
                "STORAGE_BACKEND=local keeps uploads and exports on this host's disk, which "
                "no other host can read; production needs object storage: set "
                "STORAGE_BACKEND=s3 and S3_BUCKET (S3_ENDPOINT_URL and S3_REGION for MinIO "
                "or another S3-compatible store)"
            )
        if self.ratelimit_memory_fallback:
            raise ValueError(
                "RATELIMIT_MEMORY_FALLBACK=true counts rate limits in each process's memory "
                "while Redis is down, so N processes allow N times every limit (login "
                "attempts included); production answers 503 until Redis is back instead: "
                "remove RATELIMIT_MEMORY_FALLBACK or set it to false"
            )
        return self

    @model_validator(mode="after")
    def _refuse_relative_public_api_url(self) -> Settings:
        parts = urlsplit(self.public_api_url)
        if self.public_api_url and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise ValueError(
                f"PUBLIC_API_URL must be an absolute http(s) URL, not {self.public_api_url!r}"
            )
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_combinations(self) -> Settings:
        if self.retry_backoff_max * 2 > self.broker_visibility_timeout:
            # A retry countdown near the visibility timeout makes Redis redeliver the
            # message while it waits, so the task would run twice (kombu#337).
            raise ValueError("RETRY_BACKOFF_MAX must be under half of BROKER_VISIBILITY_TIMEOUT")
        if self.task_time_limit >= self.broker_visibility_timeout:
            raise ValueError("TASK_TIME_LIMIT must be below BROKER_VISIBILITY_TIMEOUT")
        if self.worker_heartbeat_seconds * 2 > self.worker_heartbeat_max_age_seconds:
            # One late heartbeat must not fail the liveness check.
            raise ValueError(
                "WORKER_HEARTBEAT_MAX_AGE_SECONDS must be at least twice WORKER_HEARTBEAT_SECONDS"
            )
        if self.beat_standby_retry_seconds >= self.beat_lease_seconds:
            # A standby would otherwise miss a free lease for longer than a lease lasts.
            raise ValueError("BEAT_STANDBY_RETRY_SECONDS must be below BEAT_LEASE_SECONDS")
        if not 0 < self.events_heartbeat_seconds < self.events_max_stream_seconds:
            # Otherwise a stream could end without ever proving to a proxy it is alive.
            raise ValueError(
                "EVENTS_HEARTBEAT_SECONDS must be positive and below EVENTS_MAX_STREAM_SECONDS"
            )
        return self

    @model_validator(mode="after")
    def _require_sentinel_master(self) -> Settings:
        for name, url in (("REDIS_URL", self.redis_url), ("CELERY_BROKER_URL", self.broker_url)):
            if not is_sentinel_url(url):
                continue
            parse_sentinel_url(url)  # refuses a malformed one, saying why
            if not self.redis_sentinel_master.strip():
                raise ValueError(
                    f"{name} is a Redis Sentinel URL: set REDIS_SENTINEL_MASTER to the name "
                    "of the master its sentinels monitor (`sentinel monitor <name> ...`)"
                )
        return self

    @model_validator(mode="after")
    def _require_audit_keys(self) -> Settings:
        # Same spirit as the secrets above: the repository's development key only where the
        # environment says development or test; anywhere else a real key must be given.
        ring = parse_audit_keys(self.audit_keys or DEV_AUDIT_KEYS)  # refuses a malformed value
        if self.app_env in ("development", "test"):
            return self
        if not self.audit_keys:
            raise ValueError("AUDIT_KEYS must be set outside development and test (id:secret)")
        dev_secrets = set(parse_audit_keys(DEV_AUDIT_KEYS).values())
        for key_id, secret in ring.items():
            if secret in dev_secrets or len(secret) < 32:
                raise ValueError(f"AUDIT_KEYS: key {key_id!r} must be a strong secret (32+ chars)")
        return self

    @cached_property
    def audit_key_ring(self) -> dict[str, bytes]:
        """Audit keys by id, the signing key first (AUDIT_KEYS, or the development key)."""
        return parse_audit_keys(self.audit_keys or DEV_AUDIT_KEYS)

    @property
    def db_uses_prepared_statements(self) -> bool:
        """Whether psycopg may prepare statements on the server (DB_PREPARED_STATEMENTS)."""
        if self.db_prepared_statements == "auto":
            return self.db_pooler != "transaction"
        return self.db_prepared_statements

    @property
    def migrations_database_url(self) -> str:
        """Where migrations run: PostgreSQL itself (DATABASE_DIRECT_URL), else DATABASE_URL."""
        return self.database_direct_url or self.database_url

    @cached_property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url

    @property
    def broker_is_rabbitmq(self) -> bool:
        """Whether Celery's broker is RabbitMQ (an AMQP URL), not Redis."""
        return urlsplit(self.broker_url).scheme in ("amqp", "amqps", "pyamqp")

    @cached_property
    def currency_allow_list(self) -> frozenset[str]:
        return frozenset(c.strip().upper() for c in self.payment_currencies.split(",") if c.strip())

    @cached_property
    def upload_type_allow_list(self) -> frozenset[str]:
        return frozenset(
            t.strip().lower() for t in self.upload_allowed_types.split(",") if t.strip()
        )

    @cached_property
    def cors_origin_list(self) -> list[str]:
        """CORS_ORIGINS; unset in development, the usual frontend dev servers (and the
        frontend emails link to), so a frontend on its own dev server works out of the box."""
        configured = [o.strip() for o in self.cors_origins.split(",") if o.strip()]
        if configured or self.app_env != "development":
            return configured
        frontend = urlsplit(self.frontend_url)
        own = [f"{frontend.scheme}://{frontend.netloc}"] if frontend.netloc else []
        return list(dict.fromkeys([*DEV_CORS_ORIGINS, *own]))

    @cached_property
    def web_bind(self) -> str:
        """The address gunicorn binds (gunicorn.conf.py)."""
        return web_bind_address(self.bind, self.port)

    def flask_config(self) -> dict[str, Any]:
        """The Flask/extension config keys derived from these settings."""
        return {
            "SETTINGS": self,
            "TESTING": self.app_env == "test",
            "SECRET_KEY": self.secret_key,
            "JWT_SECRET_KEY": self.jwt_secret_key,
            "JWT_ACCESS_TOKEN_EXPIRES": self.access_token_minutes * 60,
            "JWT_REFRESH_TOKEN_EXPIRES": self.refresh_token_days * 86400,
            "JWT_TOKEN_LOCATION": ["headers"],
            "JWT_ERROR_MESSAGE_KEY": "detail",
            "MAX_CONTENT_LENGTH": self.max_content_length,
            "RATELIMIT_ENABLED": self.ratelimit_enabled,
            # Redis, through blueprints.common.ratelimits.RedisWindowStorage (one round
            # trip per limit and request instead of three).
            "RATELIMIT_STORAGE_URI": f"maycole+{self.redis_url}",
            "RATELIMIT_STRATEGY": "fixed-window",  # O(1) per hit; moving-window is O(limit)
            "RATELIMIT_HEADERS_ENABLED": True,
            "RATELIMIT_HEADER_LIMIT": "RateLimit-Limit",
            "RATELIMIT_HEADER_REMAINING": "RateLimit-Remaining",
            "RATELIMIT_HEADER_RESET": "RateLimit-Reset",
            # flask-limiter would stamp Retry-After on EVERY limited response (and inflate
            # ours on 503s); it writes here instead and request_hooks keeps it for 429 only.
            "RATELIMIT_HEADER_RETRY_AFTER": "X-RateLimit-Retry-After",
            "RATELIMIT_STORAGE_OPTIONS": {
                "socket_timeout": 1,
                "socket_connect_timeout": 1,
                # behind Sentinel: the master the storage follows (SentinelWindowStorage)
                **(
                    {"master_name": self.redis_sentinel_master}
                    if is_sentinel_url(self.redis_url)
                    else {}
                ),
            },
            # A Redis outage: limits counted per process in memory (development, test), or
            # the storage error surfaces as a 503 problem+json (production: fail closed).
            "RATELIMIT_SWALLOW_ERRORS": self.ratelimit_memory_fallback,
            "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": self.ratelimit_memory_fallback,
            "VALIDATION_ERROR_STATUS_CODE": 422,
            "JSON_SORT_KEYS": False,
            "SPEC_FORMAT": "json",
            "INFO": {"description": "Maycole backend API. Errors are RFC 9457 problem+json."},
        }


def web_bind_address(bind: str, port: int | str) -> str:
    """BIND, or loopback on PORT: where the web process listens."""
    return bind.strip() or f"127.0.0.1:{port}"


def local_api_url(bind: str, port: int | str) -> str:
    """The URL of an API listening on gunicorn address `bind`, as seen from this machine.

    A wildcard host (0.0.0.0, ::) is reached through loopback; an address without a TCP
    port (a unix socket, an inherited descriptor) falls back to loopback on `port`.
    """
    if bind.startswith(("unix:", "fd://")):
        return f"http://127.0.0.1:{port}"
    host, bound_port = bind, "8000"  # gunicorn's own default for a bare host
    if bind.startswith("["):  # [v6]:port
        host, _, rest = bind[1:].partition("]")
        bound_port = rest.removeprefix(":") or bound_port
    elif bind.count(":") == 1:
        host, bound_port = bind.split(":")
    if host in ("", "0.0.0.0", "::", "*"):  # noqa: S104 - a wildcard read, not bound
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{bound_port}"


def parse_audit_keys(value: str) -> dict[str, bytes]:
    """`id:secret,id:secret` as {id: secret}, in the given order (the first one signs)."""
    ring: dict[str, bytes] = {}
    for entry in value.split(","):
        key_id, _, secret = entry.strip().partition(":")
        if not _AUDIT_KEY_ID.fullmatch(key_id) or not secret:
            raise ValueError(
                "AUDIT_KEYS must be comma-separated id:secret pairs (ids: 1-16 of A-Za-z0-9_.-)"
            )
        if key_id in ring:
            raise ValueError(f"AUDIT_KEYS names key {key_id!r} twice")
        ring[key_id] = secret.encode()
    return ring


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with explicit overrides (tests use these)."""
    return Settings(**overrides)
