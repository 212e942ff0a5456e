"""A short job whose claim commits with its work (`claim_with_work`, the fan-out's): one
transaction and one Redis round trip for the whole job; nothing of it visible before
that commit, so a duplicate delivery waits and then skips it, and a failure before it
still counts as an attempt. A worker killed meanwhile: tests/services/jobs/test_reliability.py.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
import redis as redis_lib
from flask import current_app
from sqlalchemy import func, select

from extensions import db
from extensions import redis as redis_ext
from models import Notification
from services.jobs import names
from services.jobs.context import JobContext, record_external_effect
from services.jobs.runner import run_job
from services.messaging import notifications, realtime
from tests.factories import add_member, make_user
from tests.services.core.test_redis_batch import commands_sent, round_trips
from tests.services.jobs.test_job_effects import (
    broker,  # noqa: F401 - the fixture
    counters,
    database_round_trips,
    fan_out,
    generation,
    one_member_alert,
)
from tests.support import fetch_job, other_connection, wait_for

FAN_OUT = names.NOTIFICATIONS_FAN_OUT


def committed(job_id: uuid.UUID | str) -> tuple[Any, ...]:
    with other_connection() as conn:
        row = conn.execute("SELECT status, attempts FROM jobs WHERE id = %s", (job_id,))
        return tuple(row.fetchone() or ())


def notified(user_id: uuid.UUID) -> int:
    db.session.rollback()
    return db.session.scalar(select(func.count()).where(Notification.user_id == user_id)) or 0


def events_of(user_id: uuid.UUID) -> list[tuple[str, Any]]:
    return [(e.event, e.data.get("status")) for e in realtime.read(user_id, "0", 0)]


def test_the_whole_job_is_one_transaction_and_one_redis_round_trip(
    broker: redis_lib.Redis,  # noqa: F811
) -> None:
    owner_id, team_id, job_id = one_member_alert()
    counts, gen = counters(), generation(team_id)
    db.session.remove()

    with database_round_trips() as ends, round_trips() as sent, commands_sent() as commands:
        run_job(fan_out, job_id, claim_with_work=True)

    done = fetch_job(job_id)
    assert done.status == "succeeded" and done.attempts == 1
    assert done.started_at is not None and done.published_at is not None
    # BEGIN, the claim, the notification (audience, preferences and insert in one
    # statement), `succeeded`, COMMIT: one commit where a claim of its own makes two.
    assert [end.strip('"').split()[0] for end in ends if end != "Sync"] == ["BEGIN", "COMMIT"]
    assert ends.count("Sync") == 3  # the claim, the notification's one statement, `succeeded`
    assert len(sent) == 1  # everything announced after that commit, in one round trip
    # Three events to the owner's stream, which is trimmed and its expiry set once.
    assert [commands.count(c) for c in ("XADD", "XTRIM")] == [3, 1]
    ttl: int = redis_ext.client.ttl(realtime.stream_key(owner_id))  # type: ignore[assignment]
    assert ttl > 0
    after = counters()
    for outcome in ("started", "succeeded"):
        assert after.get(f"{outcome}|{FAN_OUT}", 0) - counts.get(f"{outcome}|{FAN_OUT}", 0) == 1
    assert generation(team_id) - gen == 1  # one commit, one dashboard bump
    # The owner's stream reads as for any job: running, the notification, finished.
    assert events_of(owner_id) == [("job.progress", "running"), ("notification.created", None),
                                   ("job.finished", "succeeded")]  # fmt: skip
    assert notified(owner_id) == 1


def test_until_it_commits_the_job_reads_queued_and_a_duplicate_delivery_waits_then_skips(
    broker: redis_lib.Redis,  # noqa: F811
) -> None:
    owner_id, _team_id, job_id = one_member_alert()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    seen: list[tuple[Any, ...]] = []
    duplicate_done = threading.Event()

    def deliver_again() -> None:
        with app.app_context():
            run_job(fan_out, job_id)  # the usual claim: waits for the row, then decides
        duplicate_done.set()

    duplicate = threading.Thread(target=deliver_again)

    def body(ctx: JobContext) -> dict[str, Any]:
        seen.append(committed(ctx.job_id))  # the claim is not visible yet
        duplicate.start()

        def duplicate_waits_for_the_row() -> bool:
            with other_connection() as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE 'UPDATE jobs%%'"
                ).fetchone()
                return bool(row and row[0] == 1)

        wait_for(duplicate_waits_for_the_row, 10, lambda: "the duplicate never waited")
        assert not duplicate_done.is_set()
        return fan_out(ctx)

    db.session.remove()
    run_job(body, job_id, claim_with_work=True)
    duplicate.join(10)

    assert seen == [("queued", 0)]
    assert duplicate_done.is_set()
    assert committed(job_id) == ("succeeded", 1)  # the duplicate took no attempt
    assert notified(owner_id) == 1
    assert [e for e in events_of(owner_id) if e[0] == "job.finished"] == [
        ("job.finished", "succeeded")
    ]


def test_a_failure_before_the_claim_commits_counts_the_attempt_and_retries(
    broker: redis_lib.Redis,  # noqa: F811
) -> None:
    owner_id, _team_id, job_id = one_member_alert()
    counts = counters()

    def failing(ctx: JobContext) -> dict[str, Any]:
        fan_out(ctx)  # written in the job's open transaction, then rolled back
        raise RuntimeError("the gateway timed out")

    db.session.remove()
    run_job(failing, job_id, claim_with_work=True)

    job = fetch_job(job_id)
    assert job.status == "retrying" and job.attempts == 1
    assert job.error == "RuntimeError: the gateway timed out"
    assert notified(owner_id) == 0
    assert events_of(owner_id) == [("job.progress", "running"), ("job.progress", "retrying")]
    after = counters()
    for outcome in ("started", "failed", "retried"):
        assert after.get(f"{outcome}|{FAN_OUT}", 0) - counts.get(f"{outcome}|{FAN_OUT}", 0) == 1


def test_a_fan_out_commits_its_claim_with_its_first_chunk_and_then_reports_progress(
    broker: redis_lib.Redis,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner_id, team_id, job_id = one_member_alert()
    add_member(team_id, make_user(), "member")
    add_member(team_id, make_user(), "member")
    db.session.commit()
    monkeypatch.setattr(notifications, "CHUNK", 2)
    seen: list[tuple[Any, ...]] = []

    def body(ctx: JobContext) -> dict[str, Any]:
        report = ctx.progress

        def progress(percent: int) -> None:
            seen.append(committed(ctx.job_id))  # after the first chunk's commit
            report(percent)

        ctx.progress = progress  # type: ignore[method-assign]
        return fan_out(ctx)

    db.session.remove()
    run_job(body, job_id, claim_with_work=True)

    assert seen == [("running", 1)]
    done = fetch_job(job_id)
    assert done.status == "succeeded" and done.attempts == 1
    assert done.result == {"notified": 3, "chunks": 2}
    assert events_of(owner_id)[0] == ("job.progress", "running")


def test_before_its_claim_commits_a_job_may_not_record_an_outside_effect(
    broker: redis_lib.Redis,  # noqa: F811
) -> None:
    _owner_id, _team_id, job_id = one_member_alert()

    def body(ctx: JobContext) -> dict[str, Any]:
        ctx.progress(50)  # nothing to show yet: does nothing
        record_external_effect(ctx, {"sent": True})  # would wait for its own row lock
        return {}

    db.session.remove()
    run_job(body, job_id, claim_with_work=True)
    job = fetch_job(job_id)
    assert job.status == "retrying" and job.attempts == 1
    assert "record_external_effect" in (job.error or "")
    assert job.result is None
