"""Beat's shared schedule: each period of an entry is claimed once, and its run is a job.

Each beat used to keep its entries' last-run times in a shelve file on its own host, so a
standby that took over counted from its own start and re-sent what its predecessor had
already sent. Every beat now reads and writes one row per entry here (`beat_entries`):

- `last_periods` is what a beat knows when it starts or takes over. An entry seen for the
  first time is recorded as sent up to that moment, so it waits for its next boundary, as
  Celery's own scheduler does.
- `claim_period` sends one period, in ONE transaction: it moves the entry's `last_period`
  forward to that period only if the stored one is earlier (a compare-and-set on the row:
  two beats, or a beat whose clock lags, cannot both send a period, nor an older period
  after a newer one), writes the run's job row with it (the outbox, jobs.outbox.enqueue)
  and commits. The message leaves after the commit; a beat killed before that leaves the
  job to the relay. A message delivered twice (the relay re-sends a job whose published
  mark was lost with its process) is skipped by the job's claim (jobs.runner).
So each period is claimed once, its message sent at least once, and its job run once,
whatever the Redis lease says: the lease only saves the beats from racing every tick.

`run_by_hand` queues a run outside the schedule (a backfill), leaving its periods alone.

Celery's `expires` option was a property of the message; a job's message may be sent again
by the relay long after beat sent it, so the run's expiry travels in its args instead
(`skip_if_expired`, applied to every job task).

Why not celery-redbeat: it keeps the schedule, and its lock, in Redis, and our Redis runs
without persistence in development and under the fault suite. A Redis that restarts empty
forgets every last run: RedBeat then recomputes them from its own start, which is the
re-sending this module exists to stop, and its send is not tied to any durable record.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert

from extensions import celery_app, db
from logs import get_logger
from models import BeatEntry, Job
from services.core.audit import record_audit
from services.core.errors import ValidationFailed
from services.jobs.context import JobContext, TaskBody
from services.jobs.outbox import enqueue

log = get_logger(__name__)

# The key of a scheduled run's job args that says which entry and period it runs:
# {"beat": {"entry": ..., "period": ISO time, "expires_at": ISO time or null}, **kwargs}.
BEAT_ARG: Final = "beat"


@dataclass(frozen=True)
class Claim:
    """What `claim_period` did: `job_id` is set when this call sent the period."""

    last_period: datetime  # the entry's latest period sent now, ours or another beat's
    job_id: uuid.UUID | None = None


def last_periods(tasks: Mapping[str, str], now: datetime) -> dict[str, datetime]:
    """Each entry's (name -> task) latest period sent; an entry seen for the first time
    is recorded at `now`, so nothing before `now` is sent for it."""
    if not tasks:
        return {}
    session = db.session
    seed = insert(BeatEntry).values(
        [{"name": name, "task": task, "last_period": now} for name, task in tasks.items()]
    )
    session.execute(seed.on_conflict_do_nothing(index_elements=[BeatEntry.name]))
    stored = session.execute(
        select(BeatEntry.name, BeatEntry.last_period).where(BeatEntry.name.in_(list(tasks)))
    ).all()
    session.commit()
    return {name: last_period for name, last_period in stored}


def claim_period(
    name: str,
    task: str,
    period: datetime,
    *,
    kwargs: Mapping[str, Any] | None = None,
    expires_in: float | None = None,
    sent_by: str = "",
) -> Claim:
    """Send `period` of entry `name` unless it, or a later one, was sent already: the claim
    and the run's job (`task`, args `kwargs` and the period) commit together."""
    session = db.session
    now = datetime.now(UTC)
    row = insert(BeatEntry).values(
        name=name, task=task, last_period=period, last_run_at=now, sent_by=sent_by
    )
    claim = row.on_conflict_do_update(
        index_elements=[BeatEntry.name],
        set_={
            "task": row.excluded.task,
            "last_period": row.excluded.last_period,
            "last_run_at": row.excluded.last_run_at,
            "sent_by": row.excluded.sent_by,
            "job_id": None,
            "updated_at": func.now(),
        },
        # The row is locked until commit: a second beat claiming the same period waits,
        # then finds it taken (READ COMMITTED re-checks this against the committed row).
        where=BeatEntry.last_period < row.excluded.last_period,
    ).returning(BeatEntry.name)
    if session.execute(claim).first() is None:
        stored = session.scalar(select(BeatEntry.last_period).where(BeatEntry.name == name))
        session.rollback()
        return Claim(last_period=stored or period)
    expires_at = now + timedelta(seconds=expires_in) if expires_in is not None else None
    run = {"entry": name, "period": period.isoformat(),
           "expires_at": expires_at.isoformat() if expires_at else None}  # fmt: skip
    job = enqueue(task, args={**(kwargs or {}), BEAT_ARG: run})
    session.execute(update(BeatEntry).where(BeatEntry.name == name).values(job_id=job.id))
    session.commit()
    return Claim(last_period=period, job_id=job.id)


def run_by_hand(task: str, kwargs: Mapping[str, Any], *, via: str) -> Job:
    """Queue one run of a scheduled job now, outside its schedule (a backfill: args
    `kwargs`, e.g. {"day": "2026-11-24"}); audited. Only the task of a scheduled job entry:
    any other job starts through its own service, which checks what it needs."""
    scheduled = {
        spec["task"]
        for spec in celery_app.conf.beat_schedule.values()
        if getattr(celery_app.tasks.get(spec["task"]), "runs_as_job", False)
    }
    if task not in scheduled:
        raise ValidationFailed(
            f"{task!r} is not the task of a scheduled job.",
            errors={"task": [f"One of: {', '.join(sorted(scheduled))}."]},
        )
    job = enqueue(task, args=dict(kwargs))
    record_audit("job.started_by_hand", subject_type="job", subject_id=job.id,
                 data={"type": task, "args": dict(kwargs), "via": via})  # fmt: skip
    db.session.commit()
    return job


def skip_if_expired(body: TaskBody) -> TaskBody:
    """`body`, except that a scheduled run taken after its expiry does nothing (a backlog
    drops stale ticks instead of running them late, as Celery's `expires` did)."""

    @functools.wraps(body)
    def run(ctx: JobContext) -> dict[str, Any] | None:
        scheduled = ctx.args.get(BEAT_ARG)
        if not isinstance(scheduled, dict):
            return body(ctx)
        expires_at = scheduled.get("expires_at")
        if expires_at and datetime.now(UTC) >= datetime.fromisoformat(expires_at):
            log.info("scheduled_run_expired", job_id=str(ctx.job_id), entry=scheduled["entry"],
                     period=scheduled["period"])  # fmt: skip
            return {"expired": True}
        return body(ctx)

    return run
