"""The reaper: jobs whose worker died (a stale heartbeat) go back to the queue, or are buried."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import select

from extensions import db
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
