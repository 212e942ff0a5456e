"""What one job sends besides its own work: the task metrics, the team dashboard's bump
and the owner's realtime events, each once per claim and settle, in one Redis round trip
each."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib

from extensions import db
from extensions import redis as redis_ext
from models import NotificationPreference
from services.jobs import metrics, names
from services.jobs.context import JobContext
from services.jobs.errors import PermanentError
from services.jobs.outbox import enqueue
from services.jobs.runner import run_job
from services.messaging import deliveries, realtime
from tests.factories import make_team, make_user
from tests.services.core.test_redis_batch import round_trips
from tests.support import PrivateStacks, fetch_job

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
