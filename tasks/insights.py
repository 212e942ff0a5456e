"""Insights jobs: analytics (queue `analytics`: fold events and our own data into
rollups) and scheduled reports (queue `exports`: beat triggers create each period's
reports once, and one `reports.send` job per team mails them)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from integrations.mail import get_mailer
from services.insights import aggregation, aggregation_runs, reports
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.runner import job_task


@job_task(names.ANALYTICS_START_AGGREGATE)
def start_aggregate(ctx: JobContext) -> dict[str, Any]:
    """Beat, hourly: queue an `analytics.aggregate` run unless one is already waiting."""
    job = aggregation_runs.start_scheduled_run()
    return {"queued": str(job.id) if job else None}


@job_task(names.ANALYTICS_AGGREGATE)
def aggregate(ctx: JobContext) -> dict[str, Any]:
    """Fold new events and recent built-in windows into rollups: every team's (beat), or
    only the team in args team_id (an admin's request), rebuilding the window in args from
    and to if given. Safe to rerun: watermarks move in the same transaction as the sums,
    and rebuilt windows are replaced."""
    args = ctx.args
    if not args.get("team_id"):
        return aggregation.run().as_dict()
    summary = aggregation.run_team(
        uuid.UUID(args["team_id"]),
        start=datetime.fromisoformat(args["from"]) if args.get("from") else None,
        end=datetime.fromisoformat(args["to"]) if args.get("to") else None,
    )
    return summary.as_dict()


@job_task(names.REPORTS_START_DAILY)
def start_daily_reports(ctx: JobContext) -> dict[str, Any]:
    """Beat, daily: queue yesterday's (or args ISO `day`'s, to backfill) report of every
    team with a recipient; once per team and day however often it runs."""
    day = ctx.args.get("day")
    period = reports.daily_period(date.fromisoformat(day) if day else None)
    return {"queued": reports.schedule_reports(period)}


@job_task(names.REPORTS_START_WEEKLY)
def start_weekly_reports(ctx: JobContext) -> dict[str, Any]:
    """Beat, Mondays: queue last week's (or the week from args ISO `monday`'s) summary of
    every team with a recipient; once per team and week however often it runs."""
    monday = ctx.args.get("monday")
    week = date.fromisoformat(monday) if monday else None
    return {"queued": reports.schedule_reports(reports.weekly_period(week))}


@job_task(names.REPORTS_SEND)
def send_report(ctx: JobContext) -> dict[str, Any]:
    """Email report `report_id` to its recipients; idempotent (each recipient is recorded
    as mailed, and a sent report is skipped)."""
    return reports.send_report(uuid.UUID(ctx.args["report_id"]), get_mailer())
