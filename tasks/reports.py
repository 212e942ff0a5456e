"""Scheduled reports (queue `exports`): beat triggers create each period's reports once,
and one `reports.send` job per team mails them."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from integrations.mail import get_mailer
from services.insights import reports
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.runner import job_task, periodic_task


@periodic_task(names.REPORTS_START_DAILY)
def start_daily(day: str | None = None) -> int:
    """Beat, daily: queue yesterday's (or ISO `day`'s, to backfill) report of every team
    with a recipient; once per team and day however often it runs."""
    return reports.schedule_reports(reports.daily_period(date.fromisoformat(day) if day else None))


@periodic_task(names.REPORTS_START_WEEKLY)
def start_weekly(monday: str | None = None) -> int:
    """Beat, Mondays: queue last week's (or the week from ISO `monday`'s) summary of every
    team with a recipient; once per team and week however often it runs."""
    week = date.fromisoformat(monday) if monday else None
    return reports.schedule_reports(reports.weekly_period(week))


@job_task(names.REPORTS_SEND)
def send(ctx: JobContext) -> dict[str, Any]:
    """Email report `report_id` to its recipients; idempotent (each recipient is recorded
    as mailed, and a sent report is skipped)."""
    return reports.send_report(uuid.UUID(ctx.args["report_id"]), get_mailer())
