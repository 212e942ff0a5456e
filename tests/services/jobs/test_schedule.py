"""Beat's shared schedule: a period is claimed once, its job is written with the claim, a
lagging clock cannot send an older period, a run taken after its expiry does nothing, and
an operator can run a scheduled job by hand (a backfill)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from apiflask import APIFlask
from sqlalchemy import func, select

from extensions import db
from models import AuditLog, BeatEntry, Job
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.schedule import BEAT_ARG, claim_period, last_periods, skip_if_expired
from tests.support import PrivateStacks, Worker, wait_job

TASK = names.MAINTENANCE_CLEANUP_IDEMPOTENCY_KEYS
T0 = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)


@pytest.fixture
def unconsumed(private_stack: PrivateStacks) -> Iterator[APIFlask]:
    """An app whose broker no worker consumes: the jobs written here stay in the ledger."""
    yield private_stack(keep="all", broker=True).app


def jobs() -> list[Job]:
    db.session.rollback()
    return list(db.session.scalars(select(Job).where(Job.type == TASK)))


def test_an_entry_first_seen_waits_for_its_next_period(unconsumed: APIFlask) -> None:
    assert last_periods({"cleanup": TASK}, T0) == {"cleanup": T0}
    # Another beat starting later finds it as the first one left it.
    assert last_periods({"cleanup": TASK}, T0 + timedelta(hours=5)) == {"cleanup": T0}
    assert jobs() == []


def test_a_period_is_claimed_once_and_its_job_written_with_the_claim(
    unconsumed: APIFlask,
) -> None:
    last_periods({"cleanup": TASK}, T0)
    period = T0 + timedelta(hours=1)

    sent = claim_period("cleanup", TASK, period, kwargs={"batch": 7}, sent_by="beat-a")
    again = claim_period("cleanup", TASK, period, sent_by="beat-b")
    older = claim_period("cleanup", TASK, T0 + timedelta(minutes=30), sent_by="beat-b")

    assert sent.job_id is not None and sent.last_period == period
    assert again.job_id is None and again.last_period == period
    assert older.job_id is None and older.last_period == period  # a lagging clock
    [job] = jobs()
    assert job.id == sent.job_id and job.status == "queued"
    assert job.args == {"batch": 7, BEAT_ARG: {"entry": "cleanup", "period": period.isoformat(),
                                               "expires_at": None}}  # fmt: skip
    entry = db.session.get(BeatEntry, "cleanup")
    assert entry is not None
    assert (entry.last_period, entry.job_id, entry.sent_by) == (period, job.id, "beat-a")

    following = claim_period("cleanup", TASK, period + timedelta(hours=1), expires_in=60)
    assert following.job_id is not None and len(jobs()) == 2
    scheduled = db.session.get(Job, following.job_id)
    assert scheduled is not None and scheduled.args[BEAT_ARG]["expires_at"] is not None


def test_beats_racing_for_one_period_send_it_once(unconsumed: APIFlask) -> None:
    """Two beats that both think they lead (a lease lost to a pause) claim the same period
    at the same moment: one job."""
    with unconsumed.app_context():
        last_periods({"cleanup": TASK}, T0)
    period, start = T0 + timedelta(hours=1), threading.Barrier(4)
    sent: list[uuid.UUID | None] = []

    def beat(name: str) -> None:
        with unconsumed.app_context():
            start.wait()
            sent.append(claim_period("cleanup", TASK, period, sent_by=name).job_id)

    threads = [threading.Thread(target=beat, args=(f"beat-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(sent) == 4 and len([job_id for job_id in sent if job_id]) == 1
    assert db.session.scalar(select(func.count()).select_from(Job)) == 1


def test_a_scheduled_run_taken_after_its_expiry_does_nothing() -> None:
    ran: list[uuid.UUID] = []

    def body(ctx: JobContext) -> dict[str, int]:
        ran.append(ctx.job_id)
        return {"deleted": 1}

    def run(args: dict[str, object]) -> dict[str, object] | None:
        ctx = JobContext(job_id=uuid.uuid4(), args=args, attempt=1, user_id=None,
                         team_id=None, worker="test")  # fmt: skip
        return skip_if_expired(body)(ctx)

    now = datetime.now(UTC)

    def scheduled(expires_at: datetime | None) -> dict[str, object]:
        at = expires_at.isoformat() if expires_at else None
        return {BEAT_ARG: {"entry": "cleanup", "period": now.isoformat(), "expires_at": at}}

    assert run(scheduled(now - timedelta(seconds=1))) == {"expired": True}
    assert ran == []
    assert run(scheduled(now + timedelta(hours=1))) == {"deleted": 1}
    assert run(scheduled(None)) == {"deleted": 1}
    assert run({}) == {"deleted": 1}  # not a scheduled run at all
    assert len(ran) == 3


def test_an_operator_backfills_a_day_by_running_its_scheduled_job_by_hand(
    app: APIFlask, worker: Worker
) -> None:
    cli = app.test_cli_runner()
    done = cli.invoke(args=["jobs", "run", names.REPORTS_START_DAILY,
                            "--args", '{"day": "2026-11-24"}'])  # fmt: skip
    assert done.exit_code == 0, done.output
    [job] = db.session.scalars(select(Job).where(Job.type == names.REPORTS_START_DAILY))
    assert job.args == {"day": "2026-11-24"} and str(job.id) in done.output
    assert wait_job(job.id, "succeeded", describe=worker.describe).result == {"queued": 0}
    [audit] = db.session.scalars(select(AuditLog).where(AuditLog.action == "job.started_by_hand"))
    assert audit.subject_id == str(job.id) and audit.data["via"] == "cli"
    assert db.session.get(BeatEntry, "reports-daily") is None  # beat's periods untouched

    # Only a scheduled job's task: anything else starts through its own service.
    refused = cli.invoke(args=["jobs", "run", names.PAYMENTS_CHARGE])
    assert refused.exit_code == 1 and "not the task of a scheduled job" in refused.output
    assert (
        cli.invoke(args=["jobs", "run", names.REPORTS_START_DAILY, "--args", "[1]"]).exit_code == 2
    )
    assert len(jobs_of(names.REPORTS_START_DAILY)) == 1


def jobs_of(task: str) -> list[Job]:
    db.session.rollback()
    return list(db.session.scalars(select(Job).where(Job.type == task)))
