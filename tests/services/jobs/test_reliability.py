"""Faults the pipeline must survive without losing or repeating work.

These start their own throwaway Redis (so they can stop it) and their own workers (so
they can kill them); the machine's shared servers are never touched.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil
import psycopg
import pytest
import redis as redis_lib
from flask.testing import FlaskClient
from sqlalchemy import event, func, select, update

from config import Settings
from extensions import db
from models import Job, Notification
from scripts.devservices import RedisServer
from services.jobs import names
from services.jobs.outbox import Message, enqueue, publish
from services.jobs.reaper import reap_orphans
from services.jobs.relay import relay_outbox, requeue_unclaimed
from services.messaging import notifications
from tests.factories import auth_headers, make_team, make_user
from tests.services.jobs.test_job_effects import LOW_STOCK
from tests.services.jobs.test_pipeline import pings_recorded, start_ping
from tests.support import (
    LOGS,
    PrivateStacks,
    Worker,
    fetch_job,
    other_connection,
    running_worker,
    wait_for,
    wait_job,
)


@pytest.fixture
def own_redis(private_stack: PrivateStacks) -> tuple[RedisServer, Settings]:
    """A throwaway Redis as the broker (only), and the app's Celery pointed at it.

    The rate-limit and token-revocation store stays on the session's Redis: revocation
    checks fail closed, so an outage of THAT Redis rightly refuses requests (503).
    """
    stack = private_stack(broker=True)
    assert stack.broker is not None
    return stack.broker, stack.settings


def test_job_accepted_while_redis_is_down_is_published_by_the_relay_later(
    client: FlaskClient, own_redis: tuple[RedisServer, Settings]
) -> None:
    server, settings = own_redis
    headers = auth_headers(make_user(admin=True))
    server.stop()

    started = time.monotonic()
    job = start_ping(client, headers)  # asserts 202: accepted although the broker is down
    assert time.monotonic() - started < 3, "a broker outage must not hang the request"
    assert fetch_job(job["id"]).published_at is None  # still in the outbox

    server.start()
    with running_worker(settings, LOGS / "relay-worker.log") as worker:
        assert relay_outbox() == 1
        done = wait_job(job["id"], "succeeded", describe=worker.describe)
    assert done.published_at is not None
    assert done.attempts == 1
    assert pings_recorded(job["id"]) == 1
    assert relay_outbox() == 0  # nothing left to send


def test_jobs_whose_messages_a_restarted_broker_lost_are_sent_again(
    client: FlaskClient, own_redis: tuple[RedisServer, Settings]
) -> None:
    # The broker Redis keeps nothing on disk: a restart empties every queue. Jobs that
    # were accepted and published before it must still run (once), not wait forever.
    server, settings = own_redis
    headers = auth_headers(make_user(admin=True))
    assert relay_outbox() == 0  # the relay has seen this broker: its mark is set
    job = start_ping(client, headers)
    # Sent; no worker has it yet. Marked by the outbox's marker a moment later.
    wait_for(lambda: fetch_job(job["id"]).published_at, timeout=1)

    server.stop()
    server.start()  # empty: the message is gone
    with running_worker(settings, LOGS / "broker-loss-worker.log") as worker:
        assert relay_outbox() == 1  # the lost job, and only it, is sent again
        done = wait_job(job["id"], "succeeded", describe=worker.describe)
        assert relay_outbox() == 0  # the broker is marked again: nothing more to send
    assert done.attempts == 1
    assert pings_recorded(job["id"]) == 1


def test_a_job_whose_message_vanished_is_sent_again_once_its_queue_is_empty(
    client: FlaskClient, own_redis: tuple[RedisServer, Settings]
) -> None:
    # A worker took the message and died before claiming the job (or held its retry
    # countdown when it was SIGKILLed): the broker has no copy left in the queue.
    server, settings = own_redis
    headers = auth_headers(make_user(admin=True))
    relay_outbox()  # the broker is marked as seen
    job = start_ping(client, headers)
    backdate = datetime.now(UTC) - timedelta(minutes=5)  # long past the stale threshold
    db.session.execute(update(Job).where(Job.id == job["id"])
                       .values(published_at=backdate, run_after=backdate))  # fmt: skip
    db.session.commit()
    broker = redis_lib.Redis.from_url(server.url(0))
    assert broker.llen("default") == 1
    assert requeue_unclaimed() == 0  # its message may just be waiting: leave it

    broker.delete("default")  # taken by a worker that died before claiming the job
    with running_worker(settings, LOGS / "unclaimed-worker.log") as worker:
        assert requeue_unclaimed() == 1
        assert relay_outbox() == 1
        done = wait_job(job["id"], "succeeded", describe=worker.describe)
    assert done.attempts == 1
    assert pings_recorded(job["id"]) == 1
    assert requeue_unclaimed() == 0


def test_publishing_after_the_commit_never_holds_two_pooled_connections(
    own_redis: tuple[RedisServer, Settings],
) -> None:
    # The committing thread must never hold two connections: one thread holding one while
    # waiting for another ran a busy web process's pool dry (every thread doing it at
    # once), stalling requests 5 s. Marking the row published is the marker thread's.
    me = threading.get_ident()
    held = peak = 0

    def checked_out(*_: object) -> None:
        nonlocal held, peak
        if threading.get_ident() == me:
            held += 1
            peak = max(peak, held)

    def checked_in(*_: object) -> None:
        nonlocal held
        if threading.get_ident() == me:
            held -= 1

    db.session.remove()
    event.listen(db.engine, "checkout", checked_out)
    event.listen(db.engine, "checkin", checked_in)
    try:
        job = enqueue(names.MAINTENANCE_PING, args={"sleep_seconds": 0})
        db.session.commit()
    finally:
        event.remove(db.engine, "checkout", checked_out)
        event.remove(db.engine, "checkin", checked_in)
    assert peak == 1
    wait_for(lambda: fetch_job(job.id).published_at, timeout=1)  # sent, and marked soon


def test_worker_killed_mid_job_is_redelivered_and_finishes_once(
    client: FlaskClient, own_redis: tuple[RedisServer, Settings]
) -> None:
    _server, settings = own_redis
    headers = auth_headers(make_user(admin=True))
    with running_worker(settings, LOGS / "sigkill-worker.log", concurrency=1) as worker:
        job = start_ping(client, headers, sleep_seconds=3)
        first_owner = wait_job(job["id"], "running", describe=worker.describe).worker
        assert first_owner is not None
        os.kill(int(first_owner.rpartition(":")[2]), signal.SIGKILL)

        done = wait_job(job["id"], "succeeded", timeout=60, describe=worker.describe)
    assert done.attempts == 2
    assert done.worker != first_owner  # a new pool process took it over at once
    assert pings_recorded(job["id"]) == 1


def test_a_worker_killed_before_a_job_claimed_with_its_work_commits_leaves_no_trace(
    own_redis: tuple[RedisServer, Settings],
) -> None:
    # notifications.fan_out claims with its work (one commit per job): killed before that
    # commit, the job has not started as far as anyone can tell. Its redelivered message
    # claims first, the usual way, so a job that kills its worker uses up its attempts.
    _server, settings = own_redis
    member = make_user()
    team_id = make_team(member)
    with other_connection() as watcher, other_connection(autocommit=False) as blocker:
        # Holding the member's user row: the job's insert (its foreign key check) waits.
        blocker.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (member.id,))
        with running_worker(settings, LOGS / "claim-with-work-kill.log", concurrency=1) as worker:
            data = {**LOW_STOCK, "team_id": str(team_id)}
            job = notifications.notify_team(team_id, "inventory_low_stock", data,
                                            event_key=f"test:{uuid.uuid4()}")  # fmt: skip
            db.session.commit()
            wait_for(lambda: inserts_waiting(watcher) == 1, 30, worker.describe)
            assert committed(watcher, job.id) == ("queued", 0)  # the claim is not visible
            assert worker.process is not None
            (pool_process,) = psutil.Process(worker.process.pid).children()
            pool_process.kill()
            # Its database session ends once PostgreSQL notices the client is gone (at the
            # end of the statement it waits in); here, at once.
            watcher.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity{INSERT_WAITS}")
            # The redelivery: claimed (and committed) before its insert waits in turn.
            wait_for(lambda: committed(watcher, job.id) == ("running", 1), 60, worker.describe)
            blocker.rollback()
            done = wait_job(job.id, "succeeded", timeout=60, describe=worker.describe)
    assert done.attempts == 1
    assert db.session.scalar(
        select(func.count()).where(Notification.user_id == member.id)
    ) == 1  # fmt: skip


# Sessions of this test's database waiting for a lock in the fan-out's insert (the server
# may hold other suites' databases).
INSERT_WAITS = (
    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    " AND query LIKE 'WITH recipient AS%'"
)


def inserts_waiting(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(f"SELECT count(*) FROM pg_stat_activity{INSERT_WAITS}").fetchone()
    return int(row[0]) if row else 0


def committed(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> tuple[Any, ...]:
    row = conn.execute("SELECT status, attempts FROM jobs WHERE id = %s", (job_id,)).fetchone()
    return tuple(row or ())


def test_sigterm_lets_the_running_job_finish_before_the_worker_exits(
    client: FlaskClient, own_redis: tuple[RedisServer, Settings]
) -> None:
    _server, settings = own_redis
    headers = auth_headers(make_user(admin=True))
    worker = Worker(settings, LOGS / "sigterm-worker.log", concurrency=1)
    worker.start()
    try:
        job = start_ping(client, headers, sleep_seconds=2)
        wait_job(job["id"], "running", describe=worker.describe)
        assert worker.process is not None
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(timeout=30) == 0
    finally:
        worker.stop()
    done = fetch_job(job["id"])
    assert done.status == "succeeded" and done.attempts == 1
    assert pings_recorded(job["id"]) == 1


def test_a_duplicate_delivery_does_the_work_once(client: FlaskClient, worker: Worker) -> None:
    headers = auth_headers(make_user(admin=True))
    job = start_ping(client, headers, sleep_seconds=0.5)
    stored = fetch_job(job["id"])
    duplicate = Message(stored.id, stored.type, stored.queue, None)
    assert publish([duplicate, duplicate]) == [stored.id, stored.id]
    wait_job(job["id"], "succeeded", describe=worker.describe)
    time.sleep(1.5)  # give the duplicates time to be delivered and skipped
    done = fetch_job(job["id"])
    assert done.attempts == 1
    assert pings_recorded(job["id"]) == 1


def _orphan(attempts: int) -> Job:
    """A job left `running` by a worker on another host that stopped heartbeating."""
    admin = make_user(admin=True)
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    job = Job(
        id=uuid.uuid4(), type="maintenance.ping", queue="default", status="running",
        user_id=admin.id, attempts=attempts, max_attempts=3, worker="gone-host:4242",
        heartbeat_at=long_ago, started_at=long_ago, published_at=long_ago,
    )  # fmt: skip
    db.session.add(job)
    db.session.commit()
    return job


def test_reaper_requeues_a_job_whose_worker_vanished(worker: Worker) -> None:
    job = _orphan(attempts=1)
    assert reap_orphans() == 1
    done = wait_job(job.id, "succeeded", describe=worker.describe)
    assert done.attempts == 2
    assert pings_recorded(str(job.id)) == 1


def test_reaper_buries_an_orphan_that_used_up_its_attempts(app: object) -> None:
    job = _orphan(attempts=3)
    assert reap_orphans() == 1
    dead = fetch_job(job.id)
    assert dead.status == "dead"
    assert "stopped responding" in (dead.error or "")
    assert reap_orphans() == 0
