"""Health per role: the web's /healthz and /readyz, the worker's liveness check, the broker.

The worker test uses its own throwaway Redis as the broker (so the session's worker takes
none of its jobs and its broker settings can be changed) and its own worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient

from celeryconfig import QUEUES
from config import Settings
from extensions import celery_app
from scripts.devservices import RedisServer, free_port
from services.ops.worker_liveness import HeartbeatRecord, check, read_record, write_record
from tasks.runtime.worker_health import broker_eviction_problem
from tests.factories import auth_headers, make_user
from tests.services.jobs.test_pipeline import start_ping
from tests.support import LOGS, ROOT, PrivateStacks, Worker, settings_env, wait_for, wait_job

pytestmark = pytest.mark.worker
MAX_AGE = 3.0


def worker_check(settings: Settings) -> subprocess.CompletedProcess[str]:
    """`python scripts/worker_check.py`, as an orchestrator's exec probe runs it."""
    return subprocess.run(
        [sys.executable, "scripts/worker_check.py"],
        cwd=ROOT, env=settings_env(settings), capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_worker_check_passes_while_the_worker_consumes_and_fails_once_it_stops(
    client: FlaskClient, tmp_path: Path, private_stack: PrivateStacks
) -> None:
    broker = private_stack.redis()
    # A broker that may evict keys: the worker must say so when it starts.
    redis.Redis(port=broker.port).config_set("maxmemory-policy", "allkeys-lru")
    settings = private_stack(
        broker=broker,
        worker_heartbeat_seconds=0.25,
        worker_heartbeat_max_age_seconds=MAX_AGE,
        worker_health_dir=str(tmp_path / "health"),
    ).settings
    headers = auth_headers(make_user(admin=True))
    worker = Worker(settings, LOGS / "health-worker.log", concurrency=1)
    worker.start()
    try:

        def verdict() -> tuple[list[str], list[str]]:
            return check(settings.worker_health_dir, MAX_AGE)

        wait_for(lambda: verdict()[0], describe=worker.describe)
        probe = worker_check(settings)
        assert probe.returncode == 0, probe.stderr
        assert "broker_may_evict_keys" in worker.describe()

        # Its only pool process busy for longer than MAX_AGE: no heartbeat can arrive, and
        # that is no fault (a liveness probe must not kill a busy worker).
        job = start_ping(client, headers, sleep_seconds=MAX_AGE + 1.5)
        wait_job(job["id"], "running", describe=worker.describe)
        while (status := wait_job(job["id"], {"running", "succeeded"}).status) == "running":
            assert verdict()[1] == [], worker.describe()
            time.sleep(0.2)
        assert status == "succeeded"
        freed = time.time()  # the heartbeat that waited in its queue arrives now
        wait_for(lambda: (_record(settings).received_at or 0) > freed, describe=worker.describe)

        # Stop consuming, as a worker that lost its consumer after a reconnect: still
        # alive (the control channel answers), but it takes nothing from its queues.
        node = _record(settings).node
        for queue in (*QUEUES, f"{node}.dq2"):
            replies = celery_app.control.cancel_consumer(queue, destination=[node], reply=True)
            assert replies, f"{node} did not answer cancel_consumer({queue})"
        stopped = time.monotonic()
        wait_for(lambda: verdict()[1], timeout=MAX_AGE + 10, describe=worker.describe)
        assert time.monotonic() - stopped < MAX_AGE + 5
        probe = worker_check(settings)
        assert probe.returncode == 1
        assert "stopped consuming" in probe.stderr
        assert worker.process is not None and worker.process.poll() is None  # alive, though
    finally:
        worker.stop()
        broker.stop()
    # A worker that shut down cleanly leaves no record behind: no running worker here.
    assert worker_check(settings).returncode == 1


def _record(settings: Settings) -> HeartbeatRecord:
    (path,) = Path(settings.worker_health_dir).glob("*.json")
    record = read_record(path)
    assert record is not None
    return record


def test_worker_check_verdicts(tmp_path: Path) -> None:
    now = time.time()
    me = os.getpid()

    def record(node: str, pid: int = me, tick: float = 0, healthy: float = 0) -> None:
        write_record(tmp_path, HeartbeatRecord(node, pid, now - 100, now - tick, now - healthy))

    assert check(tmp_path, MAX_AGE) == (
        [],
        [f"no running worker has a heartbeat record in {tmp_path}"],
    )
    record("live@h")
    record("gone@h", pid=2**22 + 1)  # above pid_max: no such process; ignored unless asked
    assert check(tmp_path, MAX_AGE) == (["live@h"], [])
    assert "not running" in check(tmp_path, MAX_AGE, node="gone@h")[1][0]
    record("stuck@h", tick=MAX_AGE + 1, healthy=MAX_AGE + 1)  # its event loop stopped
    record("idle@h", healthy=MAX_AGE + 1)  # the loop runs, but nothing arrives
    live, problems = check(tmp_path, MAX_AGE)
    assert live == ["live@h"]
    assert "event loop has not run" in problems[1] and "stopped consuming" in problems[0]


def test_broker_eviction_policy_check(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        assert broker_eviction_problem(server.url(0)) is None  # devservices: noeviction
        redis.Redis(port=server.port).config_set("maxmemory-policy", "volatile-lru")
        assert "volatile-lru" in (broker_eviction_problem(server.url(0)) or "")
    finally:
        server.stop()
    # Cannot tell (unreachable, or managed Redis refusing CONFIG), or not Redis: no noise.
    assert broker_eviction_problem(server.url(0)) is None
    assert broker_eviction_problem("amqp://guest:guest@127.0.0.1:5672//") is None


def test_healthz_does_no_io_and_readyz_names_what_is_down(private_stack: PrivateStacks) -> None:
    nowhere = free_port()  # nothing listens there
    down = private_stack(
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{nowhere}/nothing",
        redis_url=f"redis://127.0.0.1:{nowhere}/0",
        celery_broker_url="",  # the broker is that Redis, also on a RabbitMQ test run
    ).client()

    alive = down.get("/healthz")
    assert alive.status_code == 200 and alive.get_json() == {"status": "ok"}

    ready = down.get("/readyz")
    assert ready.status_code == 503
    checks = ready.get_json()["checks"]
    assert set(checks) >= {"postgresql", "redis", "broker"}
    assert all(checks[name] != "ok" for name in ("postgresql", "redis", "broker"))
