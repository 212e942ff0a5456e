"""The reaper: jobs whose worker died (a stale heartbeat) go back to the queue, or are buried;
jobs whose message the broker dead-lettered are buried."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import select

from extensions import db
from integrations.broker_state import BrokerUnavailable, broker_state
from logs import get_logger
from models import Job
from services.jobs import signals
from services.jobs.outbox import send_after_commit

log = get_logger(__name__)


def reap_orphans(batch_size: int = 500) -> int:
    """Hand jobs whose worker died (stale heartbeat) back to the queue, or bury them.

    This bounds recovery to the stale threshold instead of the broker's visibility
    timeout, and guarantees no job stays `running` forever.
    """
    settings = current_app.config["SETTINGS"]
    now = datetime.now(UTC)
    stale_before = now - timedelta(seconds=settings.job_stale_seconds)
    session = db.session
    jobs = session.scalars(
        select(Job)
        .where(Job.status == "running", Job.heartbeat_at < stale_before)
        .limit(batch_size)
        .with_for_update(skip_locked=True)
    ).all()
    for job in jobs:
        job.worker, job.heartbeat_at = None, None
        if job.attempts >= job.max_attempts:
            job.status, job.finished_at = "dead", now
            job.error = job.error or "The worker running this job stopped responding."
            signals.failed_for_good.send(job)
        else:
            job.status, job.run_after, job.published_at = "retrying", now, None
            send_after_commit(session(), job)
        log.warning("job_reaped", job_id=str(job.id), status=job.status, attempts=job.attempts)
    session.commit()
    for job in jobs:
        signals.status_changed.send(job)  # after the commit: `retrying` or `job.finished` (dead)
    return len(jobs)


def bury_dead_lettered(batch_size: int = 100) -> int:
    """Make dead letters of the jobs whose message the broker itself gave up on.

    On RabbitMQ a quorum queue dead-letters a message redelivered BROKER_DELIVERY_LIMIT
    times (each delivery killed or cut off its worker: a poison job); this job would
    otherwise be reaped and sent again forever. It becomes `dead` with the broker's
    reason, on the admins' dead-letter list like any other. Idempotent: a job that has
    finished meanwhile is left as it is, and a dead letter is removed from the broker only
    after this commits. Returns how many jobs were buried.
    """
    broker = broker_state()
    if broker is None:
        return 0
    session = db.session
    try:
        with broker.dead_letters(batch_size) as letters:
            reasons = {uuid.UUID(d.task_id): d.reason for d in letters if _is_uuid(d.task_id)}
            jobs = session.scalars(
                select(Job)
                .where(Job.id.in_(reasons), Job.status.in_(("queued", "retrying", "running")))
                .with_for_update()  # not skip_locked: the dead letter is gone after this
            ).all() if reasons else []  # fmt: skip
            now = datetime.now(UTC)
            for job in jobs:
                job.status, job.finished_at = "dead", now
                job.worker, job.heartbeat_at = None, None
                job.error = (
                    f"The broker dead-lettered this job's message ({reasons[job.id]}): it was "
                    "delivered too often without finishing."
                )
                signals.failed_for_good.send(job)
                log.warning("job_dead_lettered", job_id=str(job.id), reason=reasons[job.id])
            session.commit()
    except BrokerUnavailable:
        session.rollback()
        return 0
    for job in jobs:
        signals.status_changed.send(job)
    return len(jobs)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
