"""Delivering notifications, the work of the `notifications.*` jobs: writing a whole
audience's rows in chunks, emailing notifications one by one, and the daily digests.

Each of them commits as it goes (a chunk, an email, a user) so that a retry after a
failure starts where the last attempt stopped and never mails anyone twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from extensions import db, redis
from integrations.mail import Mailer, PermanentMailError
from logs import get_logger
from models import Notification
from services.jobs import names
from services.jobs.outbox import enqueue
from services.messaging import notifications
from services.messaging.mail import EmailNotApplicable, build_message

log = get_logger(__name__)


def fan_out(args: dict[str, Any], progress: Callable[[int], None]) -> dict[str, Any]:
    """Notify a whole audience (args: audience, team_id?, template, data, event_key) in
    chunks; idempotent: rows are unique per (user, event_key) and each chunk commits."""
    team_id = uuid.UUID(args["team_id"]) if args.get("team_id") else None
    written = chunks = 0
    after = uuid.UUID(int=0)
    while recipients := notifications.write_audience_chunk(args, after, team_id):
        written += sum(1 for r in recipients if r.new_id is not None)
        chunks += 1
        if len(recipients) < notifications.CHUNK:
            # The last chunk commits with `succeeded`, so a one-chunk audience (most of
            # them) costs one transaction, not three (chunk, progress, settle).
            break
        # A checkpoint between chunks: a rerun skips what is written.
        db.session.commit()
        progress(min(99, chunks))
        after = recipients[-1].user_id
    return {"notified": written, "chunks": chunks}


def send_emails(notification_ids: Iterable[str], mailer: Mailer) -> dict[str, Any]:
    """Email a chunk of notifications; each is marked as it is sent, so a retry after a
    failure never mails one twice."""
    sent = skipped = 0
    for raw in notification_ids:
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


def send_digests(user_ids: Iterable[str], mailer: Mailer) -> dict[str, Any]:
    """Email each user one summary of their pending notifications."""
    sent = 0
    for raw in user_ids:
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


def start_digests() -> int:
    """Queue digest jobs for users with pending notifications, CHUNK per job, once a day."""
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
