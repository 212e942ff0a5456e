"""What one job costs besides its own work: the task metrics, the team dashboard's bump
and the owner's realtime events, each once per claim and settle, in one Redis round trip
each; a claim committed by itself in one database round trip, before the work starts;
heartbeats from one thread per process, not one per job."""

from __future__ import annotations

import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from psycopg.pq import Trace
from sqlalchemy import event, update

from extensions import db
from extensions import redis as redis_ext
from models import Job, NotificationPreference
from services.jobs import metrics, names
from services.jobs.context import JobContext
from services.jobs.errors import PermanentError
from services.jobs.heartbeat import Heartbeat
from services.jobs.outbox import enqueue
from services.jobs.runner import run_job
from services.messaging import deliveries, realtime
from tests.factories import make_team, make_user
from tests.services.core.test_redis_batch import round_trips
from tests.support import PrivateStacks, fetch_job, other_connection, wait_for

FAN_OUT = names.NOTIFICATIONS_FAN_OUT
LOW_STOCK = {"sku": "SKU-1", "name": "Widget", "quantity": 3, "threshold": 5,
             "item_id": str(uuid.uuid4())}  # fmt: skip


@pytest.fixture
def broker(private_stack: PrivateStacks) -> Iterator[redis_lib.Redis]:
    """A broker of our own that no worker consumes: the test runs the job itself."""
    stack = private_stack(broker=True)
    assert stack.broker is not None
    yield redis_lib.Redis.from_url(stack.broker.url(0))


def fan_out(ctx: JobContext) -> dict[str, Any]:
    """The body of the `notifications.fan_out` task."""
    return deliveries.fan_out(ctx.args, ctx.progress)


def one_member_alert() -> tuple[uuid.UUID, uuid.UUID, str]:
    """(owner, team, job id): a low-stock alert to a one-member team, owned by its member
    (email off, so the job sends nothing but its Redis writes)."""
    owner = make_user()
    team_id = make_team(owner)
    db.session.add(NotificationPreference(user_id=owner.id, category="inventory",
                                          channel="email", enabled=False))  # fmt: skip
    args = {"audience": "team", "team_id": str(team_id), "roles": [],
            "template": "inventory_low_stock", "data": {**LOW_STOCK, "team_id": str(team_id)},
            "event_key": f"test:{uuid.uuid4()}"}  # fmt: skip
    job = enqueue(FAN_OUT, args=args, user_id=owner.id, team_id=team_id)
    db.session.commit()
    return owner.id, team_id, str(job.id)


def counters() -> dict[str, int]:
    raw = redis_ext.client.hgetall(metrics.COUNTS_KEY)
    return {k.decode(): int(v) for k, v in raw.items()}  # type: ignore[union-attr]


def runtimes(task: str) -> int:
    """How many runs of `task` the runtime histogram counted (every bucket, not the sum)."""
    raw: dict[bytes, bytes] = redis_ext.client.hgetall(metrics.RUNTIME_KEY)  # type: ignore[assignment]
    buckets = [k.decode() for k in raw if not k.decode().endswith("|sum")]
    return sum(int(raw[k.encode()]) for k in buckets if k.startswith(f"{task}|"))


def generation(team_id: uuid.UUID) -> int:
    raw: bytes | None = redis_ext.client.get(f"dashboard:gen:{team_id}")  # type: ignore[assignment]
    return int(raw or 0)


def test_a_job_sends_its_metrics_dashboard_bumps_and_events_once_each(
    broker: redis_lib.Redis,
) -> None:
    owner_id, team_id, job_id = one_member_alert()
    counts, timed, gen = counters(), runtimes(FAN_OUT), generation(team_id)

    with round_trips() as sent:
        run_job(fan_out, job_id)

    assert fetch_job(job_id).status == "succeeded"
    # One Redis round trip after the claim's commit, one after the settle's.
    assert len(sent) == 2
    after = counters()
    assert after.get(f"started|{FAN_OUT}", 0) - counts.get(f"started|{FAN_OUT}", 0) == 1
    assert after.get(f"succeeded|{FAN_OUT}", 0) - counts.get(f"succeeded|{FAN_OUT}", 0) == 1
    assert runtimes(FAN_OUT) - timed == 1
    assert generation(team_id) - gen == 2  # the claim's commit (running) and the settle's
    events = [(e.event, e.data) for e in realtime.read(owner_id, "0", 0)]
    assert [name for name, _ in events] == ["job.progress", "notification.created",
                                            "job.finished"]  # fmt: skip
    assert events[0][1]["status"] == "running" and events[0][1]["job_id"] == job_id
    assert events[1][1]["title"] == "SKU-1 is running low"
    assert events[2][1] == {"job_id": job_id, "type": FAN_OUT, "status": "succeeded"}


def test_a_failed_attempt_sends_its_metrics_and_events_once_each(
    broker: redis_lib.Redis,
) -> None:
    owner_id, team_id, job_id = one_member_alert()
    counts, gen = counters(), generation(team_id)

    def failing(ctx: JobContext) -> dict[str, Any]:
        raise RuntimeError("the gateway timed out")

    run_job(failing, job_id)
    assert fetch_job(job_id).status == "retrying"
    after = counters()
    for outcome in ("started", "failed", "retried"):
        assert after.get(f"{outcome}|{FAN_OUT}", 0) - counts.get(f"{outcome}|{FAN_OUT}", 0) == 1
    assert generation(team_id) - gen == 2  # running, then retrying

    def refused(ctx: JobContext) -> dict[str, Any]:
        raise PermanentError("invalid request")

    db.session.remove()
    run_job(refused, job_id)  # the retry's delivery, failing for good this time
    assert fetch_job(job_id).status == "failed"
    statuses = [(e.event, e.data["status"]) for e in realtime.read(owner_id, "0", 0)
                if e.event.startswith("job.")]  # fmt: skip
    assert statuses == [("job.progress", "running"), ("job.progress", "retrying"),
                        ("job.progress", "running"), ("job.finished", "failed")]  # fmt: skip


@contextmanager
def database_round_trips() -> Iterator[list[str]]:
    """The messages that end a round trip to PostgreSQL (a simple Query, or the Sync after
    an extended query), on every pooled connection used meanwhile; filled in at the end."""
    ends: list[str] = []
    with tempfile.TemporaryDirectory() as folder, (Path(folder) / "trace").open("w") as out:

        def checkout(dbapi_connection: Any, *_: Any) -> None:
            dbapi_connection.pgconn.trace(out.fileno())
            dbapi_connection.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS)

        def checkin(dbapi_connection: Any, *_: Any) -> None:
            dbapi_connection.pgconn.untrace()

        event.listen(db.engine, "checkout", checkout)
        event.listen(db.engine, "checkin", checkin)
        try:
            yield ends
        finally:
            event.remove(db.engine, "checkout", checkout)
            event.remove(db.engine, "checkin", checkin)
            out.flush()
            for line in (Path(folder) / "trace").read_text().splitlines():
                parts = line.split("\t")
                if parts[0] == "F" and parts[2] in ("Query", "Sync"):
                    ends.append(parts[3].strip() if parts[2] == "Query" else "Sync")


def test_the_claim_is_committed_in_one_round_trip_before_the_work_starts(
    broker: redis_lib.Redis,
) -> None:
    _owner_id, _team_id, job_id = one_member_alert()
    seen: list[tuple[Any, ...]] = []

    def body(ctx: JobContext) -> None:
        # Another connection sees the claim: a worker killed from here on has used up
        # an attempt, and the redelivery or the reaper finds the job running.
        # (Its own connection, outside the pool, so that it does not count below.)
        with other_connection(autocommit=False) as other:
            row = other.execute("SELECT status, attempts FROM jobs WHERE id = %s", (ctx.job_id,))
            seen.append(tuple(row.fetchone() or ()))

    db.session.remove()
    with database_round_trips() as ends:
        run_job(body, job_id)
    assert seen == [("running", 1)]
    assert fetch_job(job_id).status == "succeeded"
    # The claim: one UPDATE in autocommit (no BEGIN, no COMMIT); the settle: BEGIN, the
    # UPDATE to `succeeded`, COMMIT.
    assert len(ends) == 4, ends
    assert ends[0] == "Sync" and ends[1].startswith('"BEGIN') and ends[2:] == ["Sync", '"COMMIT"']


def test_heartbeats_come_from_one_thread_per_process_while_jobs_run(
    broker: redis_lib.Redis,
) -> None:
    first, second = (enqueue(names.MAINTENANCE_PING, args={}) for _ in range(2))
    db.session.execute(update(Job).values(worker="here", status="running", heartbeat_at=None))
    db.session.commit()

    def beats(job: Job) -> datetime | None:
        db.session.expire_all()
        return fetch_job(job.id).heartbeat_at

    one, two = Heartbeat(first.id, "here", 0.1), Heartbeat(second.id, "here", 0.1)
    threads = threading.active_count()
    one.start()
    two.start()
    wait_for(lambda: beats(first) is not None and beats(second) is not None, 5)
    assert threading.active_count() <= threads + 1  # one thread beats for both
    one.stop()
    stopped_at = beats(first)
    later = beats(second)
    wait_for(lambda: beats(second) != later, 5)  # the other job still beats
    assert beats(first) == stopped_at
    two.stop()
    for _ in range(50):  # short jobs start and stop without a thread each
        beat = Heartbeat(first.id, "here", 0.1)
        beat.start()
        beat.stop()
    assert threading.active_count() <= threads + 1
