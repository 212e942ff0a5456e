"""Notification jobs (queue `notifications`; emails they send go out from here too)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from extensions import db, redis
from integrations.mail import PermanentMailError, get_mailer
from logs import get_logger
from models import Notification
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.outbox import enqueue
from services.jobs.runner import job_task, periodic_task
from services.messaging import notifications
from services.messaging.mail import EmailNotApplicable, build_message

log = get_logger(__name__)


@job_task(names.NOTIFICATIONS_FAN_OUT)
def fan_out(ctx: JobContext) -> dict[str, Any]:
    """Notify a whole audience (args: audience, team_id?, template, data, event_key) in
    chunks; idempotent: rows are unique per (user, event_key) and each chunk commits."""
    args = ctx.args
    team_id = uuid.UUID(args["team_id"]) if args.get("team_id") else None
    written = chunks = 0
    for user_ids in notifications.audience_chunks(args):
        if chunks:
            # A checkpoint between chunks: a rerun skips what is written. The last chunk
            # commits with `succeeded` instead, so a one-chunk audience (most of them)
            # costs one transaction, not three (chunk, progress, settle).
            db.session.commit()
            ctx.progress(min(99, chunks))
        written += len(
            notifications.write_chunk(user_ids, args["template"], args["data"],
                                      event_key=args["event_key"], team_id=team_id)
        )  # fmt: skip
        chunks += 1
    return {"notified": written, "chunks": chunks}


@job_task(names.NOTIFICATIONS_SEND_EMAILS)
def send_emails(ctx: JobContext) -> dict[str, Any]:
    """Email a chunk of notifications (args: notification_ids); each is marked as it is
    sent, so a retry after a failure never mails one twice."""
    mailer, sent, skipped = get_mailer(), 0, 0
    for raw in ctx.args["notification_ids"]:
        row = db.session.scalar(
            select(Notification).where(Notification.id == uuid.UUID(raw)).with_for_update()
        )
        if row is None or row.emailed_at is not None:
            db.session.rollback()
            continue
        try:
            message = build_message("notification", {"notification_id": raw}, job_id=row.id)
            mailer.send(message)
        except (EmailNotApplicable, PermanentMailError) as exc:
            log.info("notification_email_skipped", notification_id=raw, reason=str(exc))
            skipped += 1
        else:
            sent += 1
        row.emailed_at = datetime.now(UTC)
        db.session.commit()
    return {"sent": sent, "skipped": skipped}


@job_task(names.NOTIFICATIONS_SEND_DIGESTS)
def send_digests(ctx: JobContext) -> dict[str, Any]:
    """Email each user (args: user_ids) one summary of their pending notifications."""
    mailer, sent = get_mailer(), 0
    for raw in ctx.args["user_ids"]:
        user_id = uuid.UUID(raw)
        try:
            mailer.send(build_message("digest", {"user_id": raw}, job_id=uuid.uuid4()))
            sent += 1
        except EmailNotApplicable:
            pass
        db.session.execute(
            update(Notification)
            .where(Notification.user_id == user_id, Notification.digest_pending)
            .values(digest_pending=False, emailed_at=datetime.now(UTC))
        )
        db.session.commit()  # this user is done: a retry starts with the next one
    return {"sent": sent}


@periodic_task(names.NOTIFICATIONS_START_DIGESTS)
def start_digests() -> int:
    """Beat, daily: queue digest jobs for users with pending notifications, CHUNK per job."""
    day = datetime.now(UTC).date().isoformat()
    # Once per day even if two beats run (each would otherwise queue the same digests).
    if not redis.client.set(f"notifications:digests:{day}", "1", nx=True, ex=2 * 86400):
        return 0
    users = list(db.session.scalars(
        select(Notification.user_id).where(Notification.digest_pending).distinct()
    ))  # fmt: skip
    for start in range(0, len(users), notifications.CHUNK):
        chunk = [str(u) for u in users[start : start + notifications.CHUNK]]
        enqueue(names.NOTIFICATIONS_SEND_DIGESTS, args={"user_ids": chunk})
    db.session.commit()
    return len(users)
