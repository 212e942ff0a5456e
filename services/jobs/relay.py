"""The outbox relay: publish what never reached the broker, and recover what the broker lost.

The job row is the outbox (services/jobs/outbox.py): a request commits the row and then
publishes; if that publish fails, or the broker later loses the message, the job is
still in PostgreSQL, and these passes (run by beat through tasks/jobs.py) send it again.
A duplicate delivery is harmless: the runner's claim skips a job that has finished or
is running elsewhere.

A request's sent row is marked published a moment later, in a batch (jobs.outbox), well
within RELAY_MIN_AGE_SECONDS; one whose mark was lost (its process crashed first) is sent
once more here and marked in the same transaction, so a job waiting behind a long queue
is never sent again on every pass.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import func, select, update

from extensions import db
from integrations.broker_state import BrokerUnavailable, broker_state
from logs import get_logger
from models import Job
from models.job import RUNNABLE
from services.jobs.outbox import Message, flush_marks, publish

log = get_logger(__name__)


def relay_outbox(batch_size: int = 500) -> int:
    """Publish jobs whose message never reached the broker, or whose retry is due.

    Rows are locked with SKIP LOCKED so concurrent relays (two beats, a slow run) never
    send the same row twice in one pass. Returns how many were published.
    """
    settings = current_app.config["SETTINGS"]
    # First what this process sent itself (retries), so it is not re-sent for a late mark;
    # and before the broker check, which may put marked rows back in the outbox.
    flush_marks()
    recover_lost_messages()
    # Leave very fresh rows to the request that is publishing them right now.
    due = datetime.now(UTC) - timedelta(seconds=settings.relay_min_age_seconds)
    session = db.session
    jobs = session.scalars(
        select(Job)
        .where(
            Job.published_at.is_(None),
            Job.status.in_(sorted(RUNNABLE)),
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


def recover_lost_messages() -> int:
    """Send again every waiting job if the broker has lost its messages; return how many.

    A job marked published whose message vanished with the broker would wait `queued`
    forever: no worker will ever be handed it and the reaper only sees `running` jobs.
    When the broker's mark is gone (integrations/broker_state.py: a key on Redis, a probe
    message on RabbitMQ; only a broker that lost its data is without it), every queued or
    retrying job goes back to the outbox (published_at NULL) and this same relay pass
    sends it. Some of those messages may
    still exist (sent after the broker came back): the duplicate delivery is harmless, as
    the claim skips a job that has finished or is running elsewhere. The mark is set only
    after the jobs are back in the outbox, so a failure in between just repeats this.
    A broker we cannot read (neither Redis nor RabbitMQ) is left alone.
    """
    broker = broker_state()
    if broker is None:
        return 0
    try:
        if broker.has_mark():
            return 0
    except BrokerUnavailable:
        return 0  # the broker is down: nothing can be sent now anyway
    session = db.session
    result = session.execute(
        update(Job)
        .where(Job.status.in_(sorted(RUNNABLE)), Job.published_at.is_not(None))
        .values(published_at=None)
    )
    returned = int(getattr(result, "rowcount", 0) or 0)
    session.commit()
    try:
        broker.set_mark()
    except BrokerUnavailable:
        return returned
    if returned:
        log.warning("broker_lost_messages", jobs_requeued=returned)
    return returned


def requeue_unclaimed() -> int:
    """Send again the jobs whose message is provably nowhere; return how many.

    A message can vanish without the broker losing its data: a worker SIGKILLed while it
    held a retry's countdown (the message sits in the broker's unacked set until the
    visibility timeout, an hour), or a delivery whose task failed before the job could be
    claimed. Such a job stays queued or retrying past its due time, never started. It is
    only provably lost when its queue is EMPTY (otherwise its message may simply be
    waiting behind others, and sending it again would pile duplicates onto a backlog), so
    only those go back to the outbox. A duplicate that does exist is skipped by the claim.
    """
    broker = broker_state()
    if broker is None:
        return 0
    settings = current_app.config["SETTINGS"]
    overdue = datetime.now(UTC) - timedelta(seconds=settings.job_stale_seconds)
    session = db.session
    waiting = session.execute(
        select(Job.queue, func.count()).where(
            Job.status.in_(sorted(RUNNABLE)), Job.published_at < overdue,
            Job.run_after < overdue,
        ).group_by(Job.queue)
    ).all()  # fmt: skip
    if not waiting:
        return 0
    try:
        depths = broker.depths([queue for queue, _ in waiting])
    except BrokerUnavailable:
        return 0  # the broker is down: nothing can be sent now anyway
    empty = [queue for queue, length in depths.items() if length == 0]
    if not empty:
        return 0
    result = session.execute(
        update(Job)
        .where(Job.status.in_(sorted(RUNNABLE)), Job.published_at < overdue,
               Job.run_after < overdue, Job.queue.in_(empty))
        .values(published_at=None)
    )  # fmt: skip
    requeued = int(getattr(result, "rowcount", 0) or 0)
    session.commit()
    if requeued:
        log.warning("jobs_without_message_requeued", jobs=requeued, queues=empty)
    return requeued
