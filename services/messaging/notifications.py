"""Notifications: one `notify` for every area; in-app rows, email by preference, live events.

`notify` writes rows in the caller's transaction (a few recipients); `notify_team` and
`notify_all_users` hand big audiences to the `notifications.fan_out` job, which writes
rows in chunks of CHUNK and queues ONE email job per chunk: 10,000 recipients are about a
dozen broker messages, not 10,000. Every row is unique per (recipient, event_key), so
re-running any of it adds nothing. Security notices ignore opt-outs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import scalar_row
from sqlalchemy import bindparam, func, select, update

from extensions import Read, db
from models import Job, Notification, NotificationPreference, User
from services.core import tokens
from services.core.audit import record_audit
from services.core.commit_hooks import after_commit
from services.core.errors import NotFound, ValidationFailed
from services.jobs import names
from services.messaging import notification_rows, realtime
from services.messaging.catalog import CATEGORIES, TEMPLATES, render

__all__ = ["CATEGORIES", "CHUNK", "notify", "notify_all_users", "notify_team"]
from services.core.pagination import Page, paginate
from services.jobs.outbox import enqueue

CHUNK = 1000
CHANNELS = ("in_app", "email")


@dataclass(frozen=True)
class Preference:
    in_app: bool
    email: bool
    email_digest: bool
    mandatory: bool


# --- preferences -------------------------------------------------------------------------


def preferences(user_id: uuid.UUID) -> dict[str, Preference]:
    """Every category with the user's choice, or its default."""
    rows = db.session.scalars(
        select(NotificationPreference).where(NotificationPreference.user_id == user_id)
    )
    stored = {(r.category, r.channel): r for r in rows}
    result = {}
    for name, category in CATEGORIES.items():
        in_app, email = stored.get((name, "in_app")), stored.get((name, "email"))
        result[name] = Preference(
            in_app=True if category.mandatory else (in_app.enabled if in_app else True),
            email=True
            if category.mandatory
            else (email.enabled if email else category.email_default),
            email_digest=False if category.mandatory else bool(email and email.digest),
            mandatory=category.mandatory,
        )
    return result


def update_preferences(user: User, changes: dict[str, dict[str, bool]]) -> dict[str, Preference]:
    """Set channels per category; security notices cannot be switched off. One transaction."""
    errors: dict[str, list[str]] = {}
    for name, choice in changes.items():
        category = CATEGORIES.get(name)
        if category is None:
            errors[name] = ["Unknown category."]
        elif category.mandatory and not all(choice.values()):
            errors[name] = ["Security notices cannot be switched off."]
    if errors:
        raise ValidationFailed("Some preferences cannot be set.", errors=errors)
    for name, choice in changes.items():
        if "in_app" in choice:
            _set_preference(user.id, name, "in_app", enabled=choice["in_app"])
        if "email" in choice or "email_digest" in choice:
            _set_preference(user.id, name, "email", enabled=choice.get("email"),
                            digest=choice.get("email_digest"))  # fmt: skip
    db.session.commit()
    return preferences(user.id)


def _set_preference(
    user_id: uuid.UUID, category: str, channel: str, *, enabled: bool | None,
    digest: bool | None = None,
) -> None:  # fmt: skip
    row = db.session.scalar(
        select(NotificationPreference).where(
            NotificationPreference.user_id == user_id,
            NotificationPreference.category == category,
            NotificationPreference.channel == channel,
        ).with_for_update()
    )  # fmt: skip
    if row is None:
        default = CATEGORIES[category].email_default if channel == "email" else True
        row = NotificationPreference(user_id=user_id, category=category, channel=channel,
                                     enabled=default, digest=False)  # fmt: skip
        db.session.add(row)
    if enabled is not None:
        row.enabled = enabled
    if digest is not None:
        row.digest = digest
    row.updated_at = datetime.now(UTC)  # the unsubscribe token is bound to this moment


# --- writing -----------------------------------------------------------------------------


# Failures of the notification machinery itself are not notified (that could loop).
_SILENT_FAILURES = ("notifications.", "email.")


def notify_job_failed(job: Job) -> None:
    """Receiver of the kernel's `failed_for_good` signal: tell the job's owner it failed
    for good, in the caller's transaction (the notification commits with the verdict)."""
    if job.user_id is None or job.type.startswith(_SILENT_FAILURES):
        return
    data = {"job_type": job.type, "attempts": job.attempts, "error": job.error or job.status,
            "job_id": str(job.id)}  # fmt: skip
    notify([job.user_id], "job_failed", data, event_key=f"job_failed:{job.id}:{job.attempts}",
           team_id=job.team_id)  # fmt: skip


def notify(
    recipients: Iterable[uuid.UUID],
    template: str,
    data: dict[str, Any],
    *,
    event_key: str,
    team_id: uuid.UUID | None = None,
    email: bool = True,
) -> list[uuid.UUID]:
    """Notify a few users in the caller's transaction (no commit); returns new row ids.

    `email=False` when the caller already sends a dedicated email for the same event.
    """
    return write_chunk(
        list(dict.fromkeys(recipients)), template, data, event_key=event_key, team_id=team_id,
        email=email,
    )  # fmt: skip


def notify_team(
    team_id: uuid.UUID,
    template: str,
    data: dict[str, Any],
    *,
    event_key: str,
    roles: Sequence[str] | None = None,
) -> Job:
    """Notify a team's members (optionally only some roles) through the fan-out job."""
    return _fan_out({"audience": "team", "team_id": str(team_id), "roles": list(roles or [])},
                    template, data, event_key, team_id)  # fmt: skip


def notify_all_users(template: str, data: dict[str, Any], *, event_key: str) -> Job:
    """An operator notice to every active user, through the fan-out job."""
    return _fan_out({"audience": "all"}, template, data, event_key, None)


def _fan_out(
    audience: dict[str, Any], template: str, data: dict[str, Any], event_key: str,
    team_id: uuid.UUID | None,
) -> Job:  # fmt: skip
    if template not in TEMPLATES:
        raise ValueError(f"unknown notification template {template!r}")
    return enqueue(
        names.NOTIFICATIONS_FAN_OUT,
        args={**audience, "template": template, "data": data, "event_key": event_key},
        team_id=team_id,
    )


def write_chunk(
    user_ids: list[uuid.UUID], template: str, data: dict[str, Any], *, event_key: str,
    team_id: uuid.UUID | None, email: bool = True,
) -> list[uuid.UUID]:  # fmt: skip
    """Insert rows for these users (skipping ones that exist), route email, queue one email
    job for the chunk and the live events after commit. No commit; returns new row ids."""
    if not user_ids:
        return []
    unique = list(dict.fromkeys(user_ids))  # one row, one email, one event per user
    recipients = _deliver("ids", {"user_ids": unique}, template, data, event_key=event_key,
                          team_id=team_id, email=email)  # fmt: skip
    return [r.new_id for r in recipients if r.new_id is not None]


def write_audience_chunk(
    args: dict[str, Any], after: uuid.UUID, team_id: uuid.UUID | None
) -> list[notification_rows.Recipient]:
    """The fan-out's work for its next CHUNK recipients (in id order, after `after`), as
    `write_chunk`; every recipient of the chunk (fewer than CHUNK: it was the last)."""
    params: dict[str, Any] = {"after": after, "limit": CHUNK}
    source: notification_rows.Source = "all"
    if args["audience"] == "team":
        params["team_id"] = uuid.UUID(args["team_id"])
        source = "team"
        if args.get("roles"):
            source, params["roles"] = "team_roles", list(args["roles"])
    return _deliver(source, params, args["template"], args["data"],
                    event_key=args["event_key"], team_id=team_id)  # fmt: skip


def _deliver(
    source: notification_rows.Source, params: dict[str, Any], template: str,
    data: dict[str, Any], *, event_key: str, team_id: uuid.UUID | None, email: bool = True,
) -> list[notification_rows.Recipient]:  # fmt: skip
    title, body, link = render(template, data)
    category = TEMPLATES[template].category
    recipients = notification_rows.write(
        source, params, category=category, event_key=event_key, team_id=team_id, title=title,
        body=body, data={**data, "link": link, "template": template}, email=email,
    )  # fmt: skip
    inserted = [r for r in recipients if r.new_id is not None]
    emailed = [str(r.new_id) for r in inserted if email and r.email == "now"]
    if emailed:
        enqueue(names.NOTIFICATIONS_SEND_EMAILS, args={"notification_ids": emailed},
                team_id=team_id)  # fmt: skip
    live = [r.user_id for r in inserted if r.in_app]
    if live:
        event = {"category": category, "title": title, "body": body, "link": link}
        after_commit(lambda: _publish_live(live, event))
    return recipients


def _publish_live(user_ids: list[uuid.UUID], event: dict[str, Any]) -> None:
    realtime.publish(user_ids, "notification.created", event)


# --- reading -----------------------------------------------------------------------------


def list_notifications(
    user: User, *, unread: bool, limit: int, cursor: str | None
) -> Page[Notification]:
    """The user's notifications, newest first."""
    query = select(Notification).where(Notification.user_id == user.id)
    if unread:
        query = query.where(Notification.read_at.is_(None))
    return paginate(query, Notification, limit, cursor)


# On every dashboard read: compiled once, run on its own (db.read_one).
_UNREAD = Read.of(
    select(func.count()).where(
        Notification.user_id == bindparam("user_id"), Notification.read_at.is_(None)
    ),
    scalar_row,
)


def unread_count(user: User) -> int:
    """The user's unread notifications, counted on a connection of its own: it sees what
    is committed, not what the caller's session holds (it serves read-only requests)."""
    return int(db.read_one(_UNREAD, {"user_id": user.id}) or 0)


def mark_read(user: User, notification_id: uuid.UUID) -> Notification:
    """Mark one of my notifications read (idempotent). One transaction."""
    row = db.session.get(Notification, notification_id)
    if row is None or row.user_id != user.id:
        raise NotFound("No such notification.")
    row.read_at = row.read_at or datetime.now(UTC)
    db.session.commit()
    return row


def mark_all_read(user: User) -> int:
    """Mark all my notifications read. One transaction."""
    result = db.session.execute(
        update(Notification)
        .where(Notification.user_id == user.id, Notification.read_at.is_(None))
        .values(read_at=datetime.now(UTC))
    )
    db.session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# --- unsubscribing -----------------------------------------------------------------------


def _email_state(user_id: uuid.UUID, category: str) -> str:
    row = db.session.scalar(
        select(NotificationPreference).where(
            NotificationPreference.user_id == user_id,
            NotificationPreference.category == category,
            NotificationPreference.channel == "email",
        )
    )
    return "default" if row is None else f"{row.enabled}:{row.digest}:{row.updated_at.isoformat()}"


def unsubscribe_token(user_id: uuid.UUID, category: str) -> str | None:
    """The token of an email's unsubscribe link, or None for security notices."""
    if CATEGORIES[category].mandatory:
        return None
    return tokens.mint_unsubscribe(user_id, category, _email_state(user_id, category))


def unsubscribe(token: str) -> tuple[User, str]:
    """Switch off one category's email for the token's user, without signing in. Works
    once: the token is bound to the preference as it was. One transaction."""
    user_id, category, state = tokens.read_unsubscribe(token)
    user = db.session.get(User, user_id)
    valid = (
        user is not None
        and user.deleted_at is None
        and category in CATEGORIES
        and not CATEGORIES[category].mandatory
        and tokens.matches(state, _email_state(user_id, category))
    )
    if not valid or user is None:
        raise ValidationFailed(
            "This unsubscribe link was already used or is not valid.",
            errors={"token": ["Not valid any more."]},
        )
    _set_preference(user_id, category, "email", enabled=False, digest=False)
    record_audit("notifications.unsubscribed", actor_id=user_id, subject_type="user",
                 subject_id=user_id, data={"category": category})  # fmt: skip
    db.session.commit()
    return user, category
