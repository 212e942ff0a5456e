"""Notification jobs (queue `notifications`; emails they send go out from here too)."""

from __future__ import annotations

from typing import Any

from integrations.mail import get_mailer
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.runner import job_task, periodic_task
from services.messaging import deliveries


@job_task(names.NOTIFICATIONS_FAN_OUT)
def fan_out(ctx: JobContext) -> dict[str, Any]:
    """Notify a whole audience (args: audience, team_id?, template, data, event_key)."""
    return deliveries.fan_out(ctx.args, ctx.progress)


@job_task(names.NOTIFICATIONS_SEND_EMAILS)
def send_emails(ctx: JobContext) -> dict[str, Any]:
    """Email a chunk of notifications (args: notification_ids), each at most once."""
    return deliveries.send_emails(ctx.args["notification_ids"], get_mailer())


@job_task(names.NOTIFICATIONS_SEND_DIGESTS)
def send_digests(ctx: JobContext) -> dict[str, Any]:
    """Email each user (args: user_ids) one summary of their pending notifications."""
    return deliveries.send_digests(ctx.args["user_ids"], get_mailer())


@periodic_task(names.NOTIFICATIONS_START_DIGESTS)
def start_digests() -> int:
    """Beat, daily: queue digest jobs for users with pending notifications."""
    return deliveries.start_digests()
