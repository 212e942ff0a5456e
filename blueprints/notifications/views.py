"""HTTP for notifications and their preferences (API.md "notifications")."""

from __future__ import annotations

import uuid

from apiflask import APIBlueprint

from blueprints.common.auth import auth_required, me
from blueprints.common.openapi import operation_doc
from blueprints.common.ratelimits import client_ip, configured, limiter
from blueprints.common.request_hooks import accepts_any_content
from blueprints.notifications.schemas import (
    MarkedRead,
    NotificationEnvelope,
    NotificationOut,
    NotificationPage,
    NotificationQuery,
    PreferenceOut,
    PreferencesIn,
    PreferencesOut,
    UnreadCount,
    Unsubscribed,
    UnsubscribeQuery,
)
from models import Notification
from services.messaging import notifications
from services.messaging.catalog import CATEGORIES

bp = APIBlueprint(
    "notifications", __name__, url_prefix="/api/v1/notifications", tag="notifications"
)


def notification_out(row: Notification) -> NotificationOut:
    return NotificationOut(
        id=row.id, category=row.category, title=row.title, body=row.body,
        link=row.data.get("link"), team_id=row.team_id, read=row.read_at is not None,
        created_at=row.created_at,
    )  # fmt: skip


def preferences_out(prefs: dict[str, notifications.Preference]) -> PreferencesOut:
    return PreferencesOut(preferences={
        name: PreferenceOut(in_app=p.in_app, email=p.email, email_digest=p.email_digest,
                            mandatory=p.mandatory, description=CATEGORIES[name].description)
        for name, p in prefs.items()
    })  # fmt: skip


@bp.get("")
@auth_required
@bp.input(NotificationQuery, location="query", arg_name="query")
@bp.output(NotificationPage)
def list_notifications(query: NotificationQuery) -> NotificationPage:
    """My notifications, newest first (`?unread=true` for unread only)."""
    page = notifications.list_notifications(
        me(), unread=query.unread, limit=query.limit, cursor=query.cursor
    )
    return NotificationPage(items=[notification_out(n) for n in page.items],
                            next_cursor=page.next_cursor)  # fmt: skip


@bp.get("/unread-count")
@operation_doc(operation_id="count_unread_notifications")
@auth_required
@bp.output(UnreadCount)
def unread_count() -> UnreadCount:
    """How many of my notifications are unread (for the badge)."""
    return UnreadCount(unread=notifications.unread_count(me()))


@bp.post("/<uuid:notification_id>/read")
@operation_doc(operation_id="mark_notification_read")
@auth_required
@bp.output(NotificationEnvelope)
def mark_read(notification_id: uuid.UUID) -> NotificationEnvelope:
    """Mark one notification read."""
    return NotificationEnvelope(
        notification=notification_out(notifications.mark_read(me(), notification_id))
    )


@bp.post("/read-all")
@auth_required
@bp.output(MarkedRead)
def mark_all_read() -> MarkedRead:
    """Mark all my notifications read."""
    return MarkedRead(marked_read=notifications.mark_all_read(me()))


@bp.get("/preferences")
@auth_required
@bp.output(PreferencesOut)
def get_preferences() -> PreferencesOut:
    """Per category: in-app, email, and daily digest instead of immediate email."""
    return preferences_out(notifications.preferences(me().id))


@bp.put("/preferences")
@auth_required
@bp.input(PreferencesIn, location="json", arg_name="body")
@bp.output(PreferencesOut)
def update_preferences(body: PreferencesIn) -> PreferencesOut:
    """Change channels per category (security notices stay on)."""
    return preferences_out(notifications.update_preferences(me(), body.changes()))


@bp.post("/unsubscribe")
@operation_doc(operation_id="unsubscribe_category")
@limiter.limit(configured("ratelimit_register"), key_func=client_ip)
@accepts_any_content  # RFC 8058 one-click posts a form body, not JSON
@bp.input(UnsubscribeQuery, location="query", arg_name="query")
@bp.output(Unsubscribed)
def unsubscribe(query: UnsubscribeQuery) -> Unsubscribed:
    """Stop one kind of email from the link in it; no sign-in needed (the link is signed)."""
    _user, category = notifications.unsubscribe(query.token)
    return Unsubscribed(category=category)
