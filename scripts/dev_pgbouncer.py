"""PgBouncer in transaction mode in front of PostgreSQL, for `make test-pgbouncer` (and
`devservices.py run --pgbouncer`): how production fronts PostgreSQL at scale, so the
suite proves the app needs nothing a transaction pooler cannot give.

The binary is the machine's (`pgbouncer` on PATH or Debian's /usr/sbin/pgbouncer;
`scripts/ensure_pgbouncer.sh` installs the package). It refuses to run as root, so as
root it runs as the unprivileged account the throwaway PostgreSQL uses.
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path
from typing import IO

from sqlalchemy.engine import URL, make_url

from scripts.dev_postgres import grant_others, pg_system_user
from scripts.dev_server import HOST, Server, free_port, port_open, say

DEBIAN_BINARY = "/usr/sbin/pgbouncer"
# Server connections per database and user: fewer than the suite's clients (each test
# process keeps up to DB_POOL_SIZE, its Celery children as many), so transactions really
# take turns on shared server connections.
POOL_SIZE = 20


def pgbouncer_binary() -> str:
    """`pgbouncer` from PATH, else Debian's; RuntimeError saying how to install it."""
    found = shutil.which("pgbouncer")
    if not found and os.access(DEBIAN_BINARY, os.X_OK):
        found = DEBIAN_BINARY  # /usr/sbin is not on every user's PATH
    if not found:
        raise RuntimeError(
            "pgbouncer not found: run scripts/ensure_pgbouncer.sh (Debian's package) "
            "or put pgbouncer on PATH"
        )
    return found


class PgBouncerServer(Server):
    """PgBouncer on 127.0.0.1:port in transaction mode, every database name passed through
    to the PostgreSQL at `upstream` (its user and password too), config in ``workdir``.

    Authentication is `trust` as the local PostgreSQL's is; the upstream URL's user is the
    one PgBouncer knows (and, for its admin console `pgbouncer`, an admin)."""

    name = "pgbouncer"

    def __init__(
        self, port: int, workdir: Path, upstream: str | URL, *, pool_size: int = POOL_SIZE
    ) -> None:
        super().__init__(port, workdir)
        self.upstream = make_url(upstream)
        self.pool_size = pool_size

    def _prepare(self, log: IO[bytes]) -> tuple[list[str], pwd.struct_passwd | None]:
        binary = pgbouncer_binary()
        user = pg_system_user()  # None unless we are root: pgbouncer refuses root
        up = self.upstream
        login = up.username or "postgres"
        target = f"host={up.host or HOST} port={up.port or 5432} user={login}"
        if up.password:
            target += f" password={up.password}"
        userlist = self.workdir / "userlist.txt"
        userlist.write_text(f'"{login}" ""\n')
        conf = self.workdir / "pgbouncer.ini"
        conf.write_text(
            "[databases]\n"
            f"* = {target}\n"
            "[pgbouncer]\n"
            f"listen_addr = {HOST}\nlisten_port = {self.port}\n"
            "unix_socket_dir =\n"  # TCP only: nothing in /tmp to collide with another run
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 2000\n"
            "auth_type = trust\n"
            f"auth_file = {userlist}\n"
            f"admin_users = {login}\n"
            # Neither: the app sends no startup options behind a pooler (DB_POOLER), and
            # psycopg sends no extra_float_digits. A refusal here is a bug to fix.
            "ignore_startup_parameters =\n"
            "log_connections = 0\nlog_disconnections = 0\n"
        )
        for path in (conf, userlist):
            path.chmod(0o644)
        if user is not None:
            grant_others(conf)  # o+x on every directory above: the account must reach it
        return [binary, str(conf)], user

    def _ready(self) -> bool:
        return port_open(self.port)

    def url(self, database: str) -> str:
        """DATABASE_URL through this PgBouncer: the upstream's user, `database`."""
        through = self.upstream.set(host=HOST, port=self.port, database=database)
        return through.render_as_string(hide_password=False)

    def dsn(self, database: str) -> str:
        """The same for libpq/psycopg (``postgresql://...``)."""
        through = self.upstream.set(drivername="postgresql", host=HOST, port=self.port)
        return through.set(database=database).render_as_string(hide_password=False)


def front_with_pgbouncer(database_url: str, workdir: Path) -> tuple[str, PgBouncerServer]:
    """Start PgBouncer on a free port in front of `database_url`'s server; return the URL
    of the same database through it, and the server (the caller stops it)."""
    server = PgBouncerServer(free_port(), workdir / "pgbouncer", database_url)
    server.start()
    database = make_url(database_url).database or "postgres"
    say(f"pgbouncer: started at {HOST}:{server.port} (transaction mode, pool {POOL_SIZE})")
    return server.url(database), server
