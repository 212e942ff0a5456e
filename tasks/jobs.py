"""Housekeeping of the job ledger: the outbox relay and the reaper of orphaned jobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import select

from extensions import db
from logs import get_logger
from models import Job
from services import realtime
from tasks.base import notify_failed_for_good, periodic_task
from tasks.dispatch import Message, publish, send_after_commit

log = get_logger(__name__)


def relay_outbox(batch_size: int = 500) -> int:
    """Publish jobs whose message never reached the broker, or whose retry is due.

    Rows are locked with SKIP LOCKED so concurrent relays (two beats, a slow run) never
    send the same row twice in one pass. Returns how many were published.
    """
    settings = current_app.config["SETTINGS"]
    # Leave very fresh rows to the request that is publishing them right now.
    due = datetime.now(UTC) - timedelta(seconds=settings.relay_min_age_seconds)
    session = db.session
    jobs = session.scalars(
        select(Job)
        .where(
            Job.published_at.is_(None),
            Job.status.in_(("queued", "retrying")),
            Job.run_after <= due,
        )
        .order_by(Job.run_after)
        .limit(batch_size)
        .with_for_update(skip_locked=True)
    ).all()
    messages = [Message(j.id, j.type, j.queue, j.request_id) for j in jobs]
    # We hold these rows' locks, so they are marked here, not by a second connection.
    sent = set(publish(messages, mark=False)) if messages else set()
    now = datetime.now(UTC)
    for job in jobs:
        if job.id in sent:
            job.published_at = now
    session.commit()
    if messages:
        log.info("relay_published", due=len(messages), sent=len(sent))
    return len(sent)


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
            notify_failed_for_good(job)
        else:
            job.status, job.run_after, job.published_at = "retrying", now, None
            send_after_commit(session(), job)
        log.warning("job_reaped", job_id=str(job.id), status=job.status, attempts=job.attempts)
    session.commit()
    for job in jobs:
        realtime.publish_job(job)  # after the commit: `retrying` or `job.finished` (dead)
    return len(jobs)


@periodic_task("jobs.relay")
def relay() -> int:
    """Beat, every few seconds: publish the outbox backlog (see `relay_outbox`)."""
    return relay_outbox()


@periodic_task("jobs.reap")
def reap() -> int:
    """Beat, every 10 s: recover jobs of dead workers (see `reap_orphans`)."""
    return reap_orphans()
