"""Notifications: one `notify` for every area; in-app rows, email by preference, live events.

`notify` writes rows in the caller's transaction (a few recipients); `notify_team` and
`notify_all_users` hand big audiences to the `notifications.fan_out` job, which writes
rows in chunks of CHUNK and queues ONE email job per chunk: 10,000 recipients are about a
dozen broker messages, not 10,000. Every row is unique per (recipient, event_key), so
re-running any of it adds nothing. Security notices ignore opt-outs.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from psycopg.rows import scalar_row
from sqlalchemy import Boolean, Table, Uuid, any_, bindparam, case, func, null, select, update
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.sql.dml import ReturningInsert

from extensions import Read, db
from models import Job, Notification, NotificationPreference, TeamMember, User
from services.core import tokens
from services.core.audit import record_audit
from services.core.commit_hooks import after_commit
from services.core.errors import NotFound, ValidationFailed
from services.jobs import names
from services.messaging import realtime
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


def audience_chunks(args: dict[str, Any]) -> Iterable[list[uuid.UUID]]:
    """The fan-out's recipients in id order, CHUNK at a time (keyset, constant memory)."""
    last = uuid.UUID(int=0)
    while True:
        if args["audience"] == "team":
            query = select(TeamMember.user_id).where(
                TeamMember.team_id == uuid.UUID(args["team_id"]), TeamMember.user_id > last
            )
            if args.get("roles"):
                query = query.where(TeamMember.role.in_(args["roles"]))
            query = query.order_by(TeamMember.user_id)
        else:
            query = select(User.id).where(
                User.is_active.is_(True), User.deleted_at.is_(None), User.id > last
            ).order_by(User.id)  # fmt: skip
        ids = list(db.session.scalars(query.limit(CHUNK)))
        if ids:
            yield ids
        if len(ids) < CHUNK:  # the last chunk: no query to find out there is no next one
            return
        last = ids[-1]


def write_chunk(
    user_ids: list[uuid.UUID], template: str, data: dict[str, Any], *, event_key: str,
    team_id: uuid.UUID | None, email: bool = True,
) -> list[uuid.UUID]:  # fmt: skip
    """Insert rows for these users (skipping ones that exist), route email, queue one email
    job for the chunk and the live events after commit. No commit; returns new row ids."""
    if not user_ids:
        return []
    title, body, link = render(template, data)
    category = TEMPLATES[template].category
    prefs = _preferences_bulk(user_ids, category)
    inserted = db.session.execute(
        _insert_chunk(),
        {"user_ids": user_ids,
         # A user who switched in-app off still gets the row (it backs the email), read.
         "in_app": [prefs[uid][0] for uid in user_ids],
         "digest": [email and prefs[uid][1] == "digest" for uid in user_ids],
         "team_id": team_id, "category": category, "event_key": event_key,
         "title": title[:300], "body": body,
         "data": {**data, "link": link, "template": template}},
    ).all()  # fmt: skip
    new_ids = [row.id for row in inserted]
    emailed = [row.id for row in inserted if email and prefs[row.user_id][1] == "now"]
    if emailed:
        ids = [str(i) for i in emailed]
        enqueue(names.NOTIFICATIONS_SEND_EMAILS, args={"notification_ids": ids}, team_id=team_id)
    live = [row.user_id for row in inserted if prefs[row.user_id][0]]
    if live:
        event = {"category": category, "title": title, "body": body, "link": link}
        after_commit(lambda: _publish_live(live, event))
    return new_ids


@functools.cache
def _insert_chunk() -> ReturningInsert[uuid.UUID, uuid.UUID]:
    """INSERT one notification per recipient from arrays (unnest), skipping existing ones.

    One small statement whatever the chunk's size, so SQLAlchemy and psycopg compile it
    once: a multi-row VALUES list of a thousand rows (ten thousand parameters) was built,
    compiled and converted anew for every chunk, and cost far more than the insert.
    Per recipient: user id, in-app on (else the row is created read) and digest pending.
    """
    recipients = (
        func.unnest(
            bindparam("user_ids", type_=ARRAY(Uuid())),
            bindparam("in_app", type_=ARRAY(Boolean())),
            bindparam("digest", type_=ARRAY(Boolean())),
        )
        .table_valued("user_id", "in_app", "digest")
        .render_derived("recipient")
    )
    table = cast(Table, Notification.__table__)  # Core: the ORM would take the params as rows
    columns = table.c
    rows = select(
        func.gen_random_uuid(),
        recipients.c.user_id,
        bindparam("team_id", type_=columns.team_id.type),
        bindparam("category", type_=columns.category.type),
        bindparam("event_key", type_=columns.event_key.type),
        bindparam("title", type_=columns.title.type),
        bindparam("body", type_=columns.body.type),
        bindparam("data", type_=columns.data.type),
        recipients.c.digest,
        case((recipients.c.in_app, null()), else_=func.now()),
    ).select_from(recipients)
    names = ["id", "user_id", "team_id", "category", "event_key", "title", "body", "data",
             "digest_pending", "read_at"]  # fmt: skip
    return (
        insert(table)
        .from_select(names, rows)
        .on_conflict_do_nothing(index_elements=["user_id", "event_key"])
        .returning(columns.id, columns.user_id)
    )


def _publish_live(user_ids: list[uuid.UUID], event: dict[str, Any]) -> None:
    realtime.publish(user_ids, "notification.created", event)


def _preferences_bulk(
    user_ids: list[uuid.UUID], category: str
) -> dict[uuid.UUID, tuple[bool, str]]:
    """Per user: (in-app on?, email "now" | "digest" | "off") for one category."""
    spec = CATEGORIES[category]
    if spec.mandatory:
        return {uid: (True, "now") for uid in user_ids}
    # Plain rows, not ORM objects, and `= ANY(array)`, not IN with a thousand parameters
    # (a new statement to render and convert for every chunk): one cached statement.
    rows = db.session.execute(
        select(NotificationPreference.user_id, NotificationPreference.channel,
               NotificationPreference.enabled, NotificationPreference.digest).where(
            NotificationPreference.user_id
            == any_(bindparam("user_ids", user_ids, type_=ARRAY(Uuid()))),
            NotificationPreference.category == category,
        )
    )  # fmt: skip
    stored = {(r.user_id, r.channel): r for r in rows}
    result = {}
    for uid in user_ids:
        in_app, email = stored.get((uid, "in_app")), stored.get((uid, "email"))
        wants_email = email.enabled if email else spec.email_default
        mode = "off" if not wants_email else ("digest" if email and email.digest else "now")
        result[uid] = (in_app.enabled if in_app else True, mode)
    return result


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
