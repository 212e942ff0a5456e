"""Redis behind Sentinel: the broker, the cache, the limiter and realtime on `sentinel://`
URLs, and all of them following the promoted replica after the master is SIGKILLed.

Each test starts a master, a replica and three sentinels of its own (tests/support/
redis_sentinel.py), an app on them and a real worker; the machine's shared Redis is never
touched.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis as redis_lib
from flask.testing import FlaskClient
from pydantic import ValidationError

import celeryconfig
from blueprints.common.ratelimits import SentinelWindowStorage, limiter
from integrations.breaker import _bytes_client
from integrations.broker import broker_redis
from redis_urls import parse_sentinel_url, redis_client
from scripts.devservices import HOST, SentinelTopology
from services.messaging import realtime
from tasks.runtime.worker_health import broker_eviction_problem
from tests.factories import PASSWORD, auth_headers, make_team, make_user
from tests.ops.test_metrics import scrape, value
from tests.services.jobs.test_pipeline import pings_recorded, start_ping
from tests.support import PrivateStack, PrivateStacks, make_settings, sentinel_redis, wait_job

LOGIN = "/api/v1/auth/login"


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[SentinelTopology]:
    with sentinel_redis(tmp_path / "sentinel") as started:
        yield started


@pytest.fixture
def stack(private_stack: PrivateStacks, topology: SentinelTopology) -> Iterator[PrivateStack]:
    """An app whose every Redis client (broker included) goes through the sentinels."""
    built = private_stack(
        keep="all",
        redis_url=topology.url(0),
        redis_sentinel_master=topology.master_name,
        celery_broker_url="",  # the broker is REDIS_URL: Sentinel too
    )
    with built.app.app_context():
        yield built


def _on(port: int) -> redis_lib.Redis:
    """A plain client of one server of the topology, to see where data really went."""
    return redis_lib.Redis(host=HOST, port=port, socket_timeout=2)


def _remaining(response: Any) -> int:
    return int(response.headers["RateLimit-Remaining"])


def _failed_logins(client: FlaskClient, redis_server: redis_lib.Redis) -> list[int]:
    """Six wrong passwords for a new account: the statuses; and that the sixth was refused
    by counts kept on `redis_server` (new limiter keys appeared there)."""
    email = make_user().email
    before = set(cast(list[bytes], redis_server.keys("LIMITS:*")))
    statuses = [
        client.post(LOGIN, json={"email": email, "password": "wrong " + PASSWORD}).status_code
        for _ in range(6)
    ]
    assert set(cast(list[bytes], redis_server.keys("LIMITS:*"))) - before
    return statuses


def _finished(user_id: uuid.UUID) -> list[str]:
    """The statuses of the `job.finished` events in the user's realtime stream."""
    events = realtime.read(user_id, "0", 0)
    return [str(e.data["status"]) for e in events if e.event == "job.finished"]


def test_the_app_and_its_worker_run_on_redis_behind_sentinel(
    stack: PrivateStack, topology: SentinelTopology
) -> None:
    client = stack.client()
    master = _on(topology.master.port)
    admin = make_user(admin=True)
    headers = auth_headers(admin)
    ready = client.get("/readyz")  # PostgreSQL, Redis and the broker, all reachable
    assert ready.status_code == 200, ready.get_json()

    with stack.worker("sentinel-worker") as worker:
        job = start_ping(client, headers)
        wait_job(job["id"], "succeeded", describe=worker.describe)
    assert pings_recorded(job["id"]) == 1
    # Realtime: the worker's event reached the requester's stream, read back through Sentinel.
    assert _finished(admin.id) == ["succeeded"]

    # The limiter: the default limit (our script) and a view's own (flask-limiter's
    # storage) count on the master, request after request.
    assert isinstance(limiter.storage, SentinelWindowStorage)
    first, second = (client.get("/api/v1/jobs", headers=headers) for _ in range(2))
    assert _remaining(second) == _remaining(first) - 1
    assert _failed_logins(client, master) == [401] * 5 + [429]

    # The cache: the dashboard's summary is kept on the master.
    team_id = make_team(admin)
    response = client.get(f"/api/v1/teams/{team_id}/dashboard", headers=headers)
    assert response.status_code == 200, response.get_json()
    assert master.keys(f"dashboard:summary:{team_id}:*")

    # The broker's own client (queue depth, the relay's mark) is the master too.
    broker = broker_redis()
    assert broker is not None
    broker.set("sentinel-test:probe", "1")
    assert master.get("sentinel-test:probe") == b"1"
    # ... and so are the workers' eviction check and the circuit breakers' twin client
    # (pybreaker needs one that returns bytes).
    url, name = topology.url(0), topology.master_name
    twin = _bytes_client(redis_client(url, name, decode_responses=True))
    twin.set("sentinel-test:twin", "bytes")
    assert twin.get("sentinel-test:twin") == master.get("sentinel-test:twin") == b"bytes"
    assert broker_eviction_problem(url, name) is None
    master.config_set("maxmemory-policy", "allkeys-lru")
    assert "allkeys-lru" in (broker_eviction_problem(url, name) or "")


def test_after_the_master_is_killed_everything_follows_the_promoted_replica(
    stack: PrivateStack, topology: SentinelTopology
) -> None:
    client = stack.client()
    admin = make_user(admin=True)
    headers = auth_headers(admin)
    old_port = topology.master.port

    with stack.worker("sentinel-failover-worker") as worker:
        before = start_ping(client, headers)
        wait_job(before["id"], "succeeded", describe=worker.describe)
        broker = broker_redis()
        assert broker is not None and broker.ping()

        topology.master.kill()  # SIGKILL: no goodbye to clients or sentinels
        killed = time.monotonic()
        statuses: list[int] = []
        new_port = 0
        while not new_port:
            response = client.get(f"/api/v1/jobs/{before['id']}", headers=headers)
            statuses.append(response.status_code)
            # During the failover window: the answer, or a problem+json 503, never a 500.
            assert response.status_code in (200, 503), response.get_data(as_text=True)
            if response.status_code == 503:
                assert response.mimetype == "application/problem+json"
            try:
                new_port = topology.wait_for_failover(old_port, timeout=0.2)
            except RuntimeError:
                assert time.monotonic() - killed < 30, "Sentinel never promoted the replica"
        assert new_port == topology.replica.port
        promoted = _on(new_port)

        # After the failover: a job posted through the API runs to the end on the worker,
        # which reconnected to the new master on its own.
        after = start_ping(client, headers)
        wait_job(after["id"], "succeeded", timeout=60, describe=worker.describe)
        assert pings_recorded(after["id"]) == 1
        assert "succeeded" in _finished(admin.id)

    # The limiter counts again, on the new master (after its short memory fallback).
    def counted_twice() -> bool:
        first, second = (client.get("/api/v1/jobs", headers=headers) for _ in range(2))
        assert {first.status_code, second.status_code} <= {200, 503}
        return second.status_code == 200 and _remaining(second) == _remaining(first) - 1

    deadline = time.monotonic() + 10
    while not counted_twice():
        assert time.monotonic() < deadline, "the limiter never counted in Redis again"
        time.sleep(0.2)
    assert _failed_logins(client, promoted) == [401] * 5 + [429]

    # broker_redis() follows the new master: lost-message detection reads the right server.
    broker = broker_redis()
    assert broker is not None
    broker.set("sentinel-test:probe", "after")
    assert promoted.get("sentinel-test:probe") == b"after"
    assert statuses, "no request was made during the failover"


def test_a_sentinel_url_needs_the_masters_name() -> None:
    url = "sentinel://127.0.0.1:26379/0;sentinel://127.0.0.1:26380/0"
    with pytest.raises(ValidationError, match="REDIS_SENTINEL_MASTER"):
        make_settings(redis_url=url, redis_sentinel_master="")
    with pytest.raises(ValidationError, match="CELERY_BROKER_URL is a Redis Sentinel URL"):
        make_settings(celery_broker_url=url, redis_sentinel_master="")
    with pytest.raises(ValidationError, match="sentinel://host:port"):
        make_settings(redis_url="sentinel://127.0.0.1:1;redis://x:2", redis_sentinel_master="m")


def test_only_a_sentinel_broker_gets_a_master_name_in_its_transport_options() -> None:
    url = "sentinel://:secret@10.0.0.1:26379/3;sentinel://10.0.0.2"
    sentinel = celeryconfig.build(make_settings(redis_url=url, redis_sentinel_master="main"))
    assert sentinel["broker_transport_options"]["master_name"] == "main"
    plain = celeryconfig.build(make_settings(redis_sentinel_master="main"))
    assert "master_name" not in plain["broker_transport_options"]

    parsed = parse_sentinel_url(url)
    assert parsed.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert parsed.master_kwargs() == {"db": 3, "password": "secret"}


def test_queue_depth_counts_the_messages_waiting_on_the_sentinels_master(
    stack: PrivateStack, topology: SentinelTopology
) -> None:
    client = stack.client()
    headers = auth_headers(make_user(admin=True))
    for _ in range(4):
        start_ping(client, headers)  # no worker consumes this topology here: they wait

    samples = scrape(client)
    assert value(samples, "maycole_queue_depth", queue="default") == 4
    assert value(samples, "maycole_queue_depth", queue="exports") == 0
    assert all(s.value == 1 for s in samples if s.name == "maycole_metrics_source_up")
    assert _on(topology.master.port).llen("default") == 4  # read on the master
