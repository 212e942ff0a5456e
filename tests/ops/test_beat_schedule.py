"""Beat's schedule in-process: where each period starts, which entries are shared, and two
schedulers that both believe they lead sending a period once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apiflask import APIFlask
from celery.schedules import BaseSchedule, crontab, maybe_schedule, schedstate
from sqlalchemy import select

from extensions import celery_app, db
from models import BeatEntry, Job
from services.jobs import names
from services.jobs.schedule import BEAT_ARG
from tasks.runtime import beat_periods, beat_scheduler
from tasks.runtime.beat_scheduler import LeaderScheduler
from tests.support import PrivateStacks


class Sunsets(BaseSchedule):  # type: ignore[misc]
    """A schedule with no boundaries to name (as Celery's `solar`, which needs ephem)."""

    def is_due(self, last_run_at: datetime) -> schedstate:
        return schedstate(False, 60.0)


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 12, day, hour, minute, second, tzinfo=UTC)


def test_a_crontab_period_starts_at_each_match_and_only_the_latest_is_sent(app: APIFlask) -> None:
    hourly = maybe_schedule(crontab(minute=2), app=celery_app)
    # 2026-12-08 is a Tuesday.
    assert beat_periods.latest_start(hourly, at(8, 9, 2), at(8, 10, 30)) == at(8, 10, 2)
    assert beat_periods.latest_start(hourly, at(8, 10, 2), at(8, 10, 30)) is None
    assert beat_periods.latest_start(hourly, at(8, 10, 1, 59), at(8, 10, 2)) == at(8, 10, 2)
    # Every beat down for a day: the latest period is sent, once, not the 24 missed.
    assert beat_periods.latest_start(hourly, at(7, 10, 2), at(8, 10, 30)) == at(8, 10, 2)
    assert beat_periods.next_start(hourly, at(8, 10, 2)) == at(8, 11, 2)

    weekly = maybe_schedule(crontab(hour=6, minute=30, day_of_week="mon"), app=celery_app)
    assert beat_periods.latest_start(weekly, at(1, 0), at(8, 10)) == at(7, 6, 30)
    assert beat_periods.next_start(weekly, at(8, 10)) == at(14, 6, 30)


def test_an_interval_period_starts_at_each_multiple_since_the_epoch(app: APIFlask) -> None:
    hourly, five = maybe_schedule(3600.0, app=celery_app), maybe_schedule(5.0, app=celery_app)
    assert beat_periods.latest_start(hourly, at(8, 9, 0), at(8, 10, 59, 59)) == at(8, 10)
    assert beat_periods.latest_start(hourly, at(8, 10, 0), at(8, 10, 59, 59)) is None
    assert beat_periods.next_start(hourly, at(8, 10, 0)) == at(8, 11, 0)
    # Every beat computes the same starts, whenever it started.
    assert beat_periods.latest_start(five, at(8, 10), at(8, 10, 0, 7)) == at(8, 10, 0, 5)
    assert beat_periods.next_start(five, at(8, 10, 0, 7)) == at(8, 10, 0, 10)


def test_a_schedule_without_boundaries_is_refused(app: APIFlask) -> None:
    beat_periods.check(maybe_schedule(crontab(minute=0), app=celery_app))
    with pytest.raises(ValueError, match="crontab or an interval"):
        beat_periods.check(Sunsets(app=celery_app))


def scheduler(app: APIFlask) -> LeaderScheduler:
    beat_scheduler.install(app)
    return LeaderScheduler(app=celery_app, lazy=True)


def test_job_entries_are_shared_and_the_housekeeping_stays_in_memory(app: APIFlask) -> None:
    beat = scheduler(app)
    beat.merge_inplace(celery_app.conf.beat_schedule)
    assert {"reports-daily", "payments-reconcile", "idempotency-cleanup"} <= set(beat.shared)
    assert set(beat.schedule) == {"jobs-relay", "audit-seal", "jobs-reap"}


@pytest.mark.parametrize(
    "spec",
    [
        {"args": ("2026-12-01",)},  # a job takes its arguments by name
        {"options": {"queue": "exports"}},  # the job's queue follows its task name
        {"schedule": Sunsets()},
    ],
)
def test_a_job_entry_beat_cannot_send_once_per_period_is_refused(
    app: APIFlask, spec: dict[str, Any]
) -> None:
    entry = {"task": names.REPORTS_START_DAILY, "schedule": crontab(hour=6, minute=0)} | spec
    with pytest.raises(ValueError):
        scheduler(app).merge_inplace({"reports-daily": entry})


def test_two_beats_that_both_think_they_lead_send_a_period_once(
    app: APIFlask, private_stack: PrivateStacks
) -> None:
    """The lease is lost (a pause longer than it lasts) and both beats send: the shared
    schedule still sends the current period of each entry once."""
    stack = private_stack(keep="all", broker=True)  # no worker consumes what is sent
    entries = {"cleanup": {"task": names.MAINTENANCE_CLEANUP_IDEMPOTENCY_KEYS,
                           "schedule": crontab(hour=0, minute=0)}}  # fmt: skip
    # Last sent two days ago, as both beats read when they took the lease: today's period
    # is due for both.
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    db.session.add(BeatEntry(name="cleanup", task=names.MAINTENANCE_CLEANUP_IDEMPOTENCY_KEYS,
                             last_period=two_days_ago))  # fmt: skip
    db.session.commit()
    first, second = scheduler(stack.app), scheduler(stack.app)
    for beat in (first, second):
        beat.merge_inplace(entries)
        beat._last_periods = {"cleanup": two_days_ago}
    first._send_shared()
    second._send_shared()

    db.session.rollback()
    [job] = db.session.scalars(select(Job)).all()
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert job.args[BEAT_ARG]["period"] == midnight.isoformat()
    entry = db.session.get(BeatEntry, "cleanup")
    assert entry is not None and entry.job_id == job.id and entry.sent_by == first.token
