"""Tests for scripts/devservices.py with real server processes (no mocks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import make_url

from scripts import devservices as ds
from tests.support import refused

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "devservices.py"


CHILD = """
import os, sys, psycopg, redis
db, r = os.environ["DATABASE_URL"], os.environ["REDIS_URL"]
print("DATABASE_URL=" + db)
print("REDIS_URL=" + r)
with psycopg.connect(db.replace("+psycopg", "")) as conn:
    print("db=" + conn.execute("SELECT current_database()").fetchone()[0])
print("ping=" + str(redis.Redis.from_url(r).ping()))
"""


def cli_env(**overrides: str) -> dict[str, str]:
    # Set by `make test` (and `make test-pgbouncer`, the last two).
    inherited = ("DATABASE_URL", "REDIS_URL", "PGPORT", "REDIS_PORT", "DATABASE_DIRECT_URL",
                 "DB_POOLER")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in inherited}
    # Configured SMTP and Stripe: these tests are about PostgreSQL and Redis, not the
    # mail sink or localstripe.
    return {
        **env,
        "SMTP_URL": "smtp://127.0.0.1:1",
        "STRIPE_SECRET_KEY": "sk_test_unused",
        **overrides,
    }


def cli(tmp_path: Path, *options: str, code: str) -> list[str]:
    """``devservices.py run OPTIONS --var TMP/var -- python -c CODE``."""
    var = ["--var", str(tmp_path / "var")]
    return [sys.executable, str(SCRIPT), "run", *options, *var, "--", sys.executable, "-c", code]


def test_redis_server_stop_and_restart(tmp_path: Path) -> None:
    port = ds.free_port()
    server = ds.RedisServer(port, tmp_path)
    with server:
        assert redis.Redis.from_url(server.url(3)).ping()
    assert refused(port)
    server.start()
    try:
        assert redis.Redis.from_url(server.url()).ping()
    finally:
        server.stop()
    assert refused(port)
    assert (tmp_path / "redis.log").exists() and (tmp_path / "redis").is_dir()


def test_postgres_server_stop_and_restart(tmp_path: Path) -> None:
    port = ds.free_port()
    server = ds.PostgresServer(port, tmp_path)
    with server:
        assert server.url("x") == f"postgresql+psycopg://postgres@127.0.0.1:{port}/x"
        with psycopg.connect(server.dsn()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        server.create_database("devsvc_unit")
        server.create_database("devsvc_unit")  # idempotent
    assert refused(port)
    server.start()  # reuses the initialised data dir
    try:
        with psycopg.connect(server.dsn("devsvc_unit")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()
    assert refused(port)


def test_cli_starts_and_stops_throwaway_servers(tmp_path: Path) -> None:
    pg_port, redis_port = ds.free_port(), ds.free_port()
    # .env in the cwd fills in what the environment lacks but must not override it.
    (tmp_path / ".env").write_text(f"REDIS_PORT={redis_port}\nPGPORT=1\n")
    result = subprocess.run(
        cli(tmp_path, "--database", "devsvc_cli_test", code=CHILD),
        cwd=tmp_path,
        env=cli_env(PGPORT=str(pg_port)),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:{pg_port}/devsvc_cli_test" in out
    assert f"REDIS_URL=redis://127.0.0.1:{redis_port}/0" in out
    assert "db=devsvc_cli_test" in out and "ping=True" in out
    assert f"postgres: started throwaway server at 127.0.0.1:{pg_port}" in result.stderr
    assert f"redis: started throwaway server at 127.0.0.1:{redis_port}" in result.stderr
    assert refused(pg_port) and refused(redis_port)


@dataclass(frozen=True)
class Found:
    database: str
    pg_port: int
    redis_port: int


@pytest.fixture(scope="module")
def running_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """Servers already listening when the CLI starts (ours, so this never depends on what
    the machine happens to run)."""
    workdir = tmp_path_factory.mktemp("found")
    pg, rd = ds.PostgresServer(ds.free_port(), workdir), ds.RedisServer(ds.free_port(), workdir)
    pg.start()
    rd.start()
    try:
        yield pg.port, rd.port
    finally:
        rd.stop()
        pg.stop()


@pytest.fixture
def found(request: pytest.FixtureRequest, running_servers: tuple[int, int]) -> Found:
    # One name per test so that parallel runs (pytest -n) do not drop each other's database.
    callspec = getattr(request.node, "callspec", None)
    name = "devsvc_found_test" + (f"_{callspec.id}" if callspec else "")
    return Found(name, *running_servers)


def found_cli(
    tmp_path: Path, found: Found, code: str, *extra: str, **popen: Any
) -> subprocess.Popen[str]:
    """Start the CLI against servers that already run, with stdout/stderr captured."""
    options = ["--database", found.database, "--redis-db", "15", *extra]
    return subprocess.Popen(
        cli(tmp_path, *options, code=code),
        cwd=tmp_path,
        env=cli_env(PGPORT=str(found.pg_port), REDIS_PORT=str(found.redis_port)),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


def test_cli_uses_found_servers(tmp_path: Path, found: Found) -> None:
    proc = found_cli(tmp_path, found, CHILD + "sys.exit(3)")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err  # the child's exit code is passed through
    assert f"postgres: found at 127.0.0.1:{found.pg_port}" in err
    assert f"redis: found at 127.0.0.1:{found.redis_port}" in err
    assert "started" not in err and not (tmp_path / "var").exists()
    assert f"REDIS_URL=redis://127.0.0.1:{found.redis_port}/15" in out
    assert f"db={found.database}" in out


PGBOUNCER_CHILD = """
import os, psycopg
pooled, direct = os.environ["DATABASE_URL"], os.environ["DATABASE_DIRECT_URL"]
print("pooler=" + os.environ["DB_POOLER"])
print("pooled=" + pooled)
print("direct=" + direct)
with psycopg.connect(pooled.replace("+psycopg", ""), prepare_threshold=None) as conn:
    name = conn.execute("SELECT current_database()").fetchone()[0]
    print("db=" + name)
# PgBouncer's admin console: the pool it keeps for that database runs transaction pooling.
console = pooled.replace("+psycopg", "").rsplit("/", 1)[0] + "/pgbouncer"
with psycopg.connect(console, autocommit=True) as admin:
    cur = admin.cursor()
    cur.execute("SHOW POOLS")
    modes = {row[0]: row[-1] for row in cur.fetchall()}
    print("mode=" + modes[name])
"""


def test_cli_with_pgbouncer_hands_over_a_transaction_pooled_url_and_the_direct_one(
    tmp_path: Path, found: Found
) -> None:
    proc = found_cli(tmp_path, found, PGBOUNCER_CHILD, "--pgbouncer")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = dict(line.split("=", 1) for line in out.splitlines())
    direct = f"postgresql+psycopg://postgres@127.0.0.1:{found.pg_port}/{found.database}"
    assert lines["direct"] == direct and lines["pooler"] == "transaction"
    bouncer_port = make_url(lines["pooled"]).port
    assert bouncer_port is not None and bouncer_port != found.pg_port
    assert lines["db"] == found.database and lines["mode"] == "transaction"
    assert f"pgbouncer: started at 127.0.0.1:{bouncer_port}" in err
    assert refused(bouncer_port)  # stopped with the command


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_signals(tmp_path: Path, found: Found, sig: signal.Signals) -> None:
    # "up" is printed inside the try so that the signal cannot arrive before the handler.
    code = "import sys, time\ntry:\n print('up', flush=True)\n time.sleep(30)\n"
    code += "except KeyboardInterrupt:\n sys.exit(7)"
    proc = found_cli(tmp_path, found, code, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # like a terminal Ctrl-C: wrapper and child both get it
    else:
        os.kill(proc.pid, sig)  # only the wrapper gets it and must forward it
    began = time.monotonic()
    proc.communicate(timeout=15)
    assert proc.returncode == (7 if sig == signal.SIGINT else 128 + sig)
    assert time.monotonic() - began < 5


SENTINEL_CHILD = """
import os
from redis_urls import parse_sentinel_url, redis_client
url, name = os.environ["REDIS_URL"], os.environ["REDIS_SENTINEL_MASTER"]
client = redis_client(url, name)
client.set("written", "through sentinel")
print("master=" + str(client.connection_pool.get_master_address()[1]))
print("sentinels=" + ",".join(str(port) for _, port in parse_sentinel_url(url).sentinels))
print("db=" + str(parse_sentinel_url(url).db))
"""


def test_cli_with_the_sentinel_topology_starts_a_master_a_replica_and_three_sentinels(
    tmp_path: Path, found: Found
) -> None:
    proc = subprocess.Popen(
        cli(tmp_path, "--database", found.database, "--redis-db", "4", code=SENTINEL_CHILD),
        cwd=Path(__file__).resolve().parents[2],  # the child imports the app's modules
        env=cli_env(PGPORT=str(found.pg_port), REDIS_TOPOLOGY="sentinel"),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    sentinels = [int(port) for port in values["sentinels"].split(",")]
    assert len(sentinels) == 3 and values["db"] == "4"
    assert f"a master ({ds.HOST}:{values['master']})" in err and "3 sentinels" in err
    assert (tmp_path / "var" / "redis-sentinel" / "replica").is_dir()
    # Stopped on exit, every one of them.
    assert all(refused(port) for port in [int(values["master"]), *sentinels])
